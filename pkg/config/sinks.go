package config

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Sink is one entry of the sinks list: a consumer group that applies the
// change topics to a target. Keys that a type does not use are rejected.
type Sink struct {
	Name string `yaml:"name"`
	Type string `yaml:"type"`
	// Tables are the captured tables (schema.table or db.table patterns,
	// '*' wildcards) this sink applies; default all.
	Tables []string `yaml:"tables"`

	// DSN is the target database (postgres, mysql).
	DSN Secret `yaml:"dsn"`
	// Path is the DuckDB database file (duckdb).
	Path string `yaml:"path"`
	// TableFormat names target tables from {db}, {schema}, {table}.
	TableFormat string `yaml:"table_format"`
	// SoftDelete keeps deleted rows, marked _tideline_deleted.
	SoftDelete bool `yaml:"soft_delete"`
	// KeepOpen (duckdb) holds the file open between batches.
	KeepOpen *bool `yaml:"keep_open"`

	// BatchRecords, BatchBytes and Linger bound one batch.
	BatchRecords int           `yaml:"batch_records"`
	BatchBytes   ByteSize      `yaml:"batch_bytes"`
	Linger       time.Duration `yaml:"linger"`
	// Group is the Kafka consumer group; default tideline-<name>-<sink>.
	Group string `yaml:"group"`
}

// SinkTypes lists the sink types and, for each, the keys it takes beyond
// name, type, tables, batch_*, linger and group.
var SinkTypes = map[string][]string{
	"postgres": {"dsn", "table_format", "soft_delete"},
	"mysql":    {"dsn", "table_format", "soft_delete"},
	"duckdb":   {"path", "table_format", "soft_delete", "keep_open"},
}

// KeepOpenOn reports whether a DuckDB sink holds its file open.
func (s *Sink) KeepOpenOn() bool { return s.KeepOpen == nil || *s.KeepOpen }

func (s *Sink) defaults(pipeline string) {
	if s.BatchRecords == 0 {
		s.BatchRecords = 10000
	}
	if s.BatchBytes == 0 {
		s.BatchBytes = 16 << 20
	}
	if s.Linger == 0 {
		s.Linger = 200 * time.Millisecond
	}
	if s.Group == "" {
		s.Group = "tideline-" + pipeline + "-" + s.Name
	}
	if s.TableFormat == "" {
		switch s.Type {
		case "mysql":
			s.TableFormat = "{table}"
		default:
			s.TableFormat = "{schema}.{table}"
		}
	}
}

var (
	sinkNameRe    = regexp.MustCompile(`^[a-z0-9_-]{1,63}$`)
	tableFormatRe = regexp.MustCompile(`^[^.\s]+(\.[^.\s]+)?$`)
)

// set reports which type-specific keys hold a value.
func (s *Sink) set() map[string]bool {
	return map[string]bool{
		"dsn": s.DSN != "", "path": s.Path != "", "soft_delete": s.SoftDelete, "keep_open": s.KeepOpen != nil,
	}
}

func (c *Config) validateSinks() Problems {
	var ps Problems
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	names := map[string]bool{}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		p := fmt.Sprintf("sinks[%d]", i)
		if !sinkNameRe.MatchString(s.Name) {
			add(p+".name", "%q: 1-63 lower-case letters, digits, '_' or '-' (it names the consumer group and the dead-letter topic)", s.Name)
		} else if names[s.Name] {
			add(p+".name", "%q is used by another sink", s.Name)
		}
		names[s.Name] = true
		keys, ok := SinkTypes[s.Type]
		if !ok {
			known := make([]string, 0, len(SinkTypes))
			for k := range SinkTypes {
				known = append(known, k)
			}
			sort.Strings(known)
			add(p+".type", "%q is not a sink type (%s)", s.Type, strings.Join(known, ", "))
			continue
		}
		allowed := map[string]bool{}
		for _, k := range keys {
			allowed[k] = true
		}
		for k, isSet := range s.set() {
			if isSet && !allowed[k] {
				add(p+"."+k, "is not used by a %s sink", s.Type)
			}
		}
		for j, t := range s.Tables {
			if !patternRe.MatchString(t) {
				add(fmt.Sprintf("%s.tables[%d]", p, j), "%q is not schema.table", t)
			}
		}
		switch s.Type {
		case "postgres":
			if s.DSN == "" {
				add(p+".dsn", "is required (postgres://user:pass@host:port/db)")
			} else if u, err := url.Parse(string(s.DSN)); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
				add(p+".dsn", "must be a postgres:// URL")
			}
		case "mysql":
			if s.DSN == "" {
				add(p+".dsn", "is required (mysql://user:pass@host:port/db)")
			} else if u, err := url.Parse(string(s.DSN)); err != nil || u.Scheme != "mysql" || strings.Trim(u.Path, "/") == "" {
				add(p+".dsn", "must be a mysql://user:pass@host:port/db URL naming the database")
			} else if _, err := MySQLTLS(u.Query(), u.Hostname()); err != nil {
				add(p+".dsn", "%v", err)
			}
		case "duckdb":
			if s.Path == "" {
				add(p+".path", "is required (the DuckDB database file)")
			}
		}
		if allowed["table_format"] && (!tableFormatRe.MatchString(s.TableFormat) || !strings.Contains(s.TableFormat, "{table}")) {
			add(p+".table_format", "%q: table or schema.table, from {db}, {schema} and {table} (with {table})", s.TableFormat)
		}
		if s.BatchRecords < 1 || s.BatchRecords > 1_000_000 {
			add(p+".batch_records", "must be between 1 and 1000000")
		}
		if s.BatchBytes < 1<<10 || s.BatchBytes > 1<<30 {
			add(p+".batch_bytes", "must be between 1KiB and 1GiB")
		}
		if s.Linger < time.Millisecond || s.Linger > time.Minute {
			add(p+".linger", "%s: must be between 1ms and 1m", s.Linger)
		}
	}
	if !c.HasSource() && c.Kafka.IsEmbedded() {
		add("kafka.brokers", "a config without a source runs sinks only: name the brokers the capture writes to (the embedded broker runs with the source)")
	}
	return ps
}
