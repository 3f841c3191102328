package config

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/tideline-cdc/tideline/pkg/objstore"
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
	// Path is the DuckDB database file (duckdb), or where a change log
	// goes: file:///dir or s3://bucket/prefix (parquet).
	Path string `yaml:"path"`
	// Catalog is the Iceberg SQL catalog: a SQLite file, or a
	// postgres:// URL (iceberg). Default for a local warehouse:
	// catalog.db in it.
	Catalog Secret `yaml:"catalog"`
	// CompactEvery (iceberg) compacts a table after every N commits to it
	// (default 100; negative: never, tideline iceberg compact does it).
	CompactEvery int `yaml:"compact_every"`
	// Warehouse is where Iceberg tables' files go: a directory,
	// file:///dir or s3://bucket/prefix (iceberg).
	Warehouse string `yaml:"warehouse"`
	// S3 configures s3:// paths (parquet, iceberg).
	S3 *S3 `yaml:"s3"`
	// TableFormat names target tables from {db}, {schema}, {table}.
	TableFormat string `yaml:"table_format"`
	// SoftDelete keeps deleted rows, marked _tideline_deleted.
	SoftDelete bool `yaml:"soft_delete"`
	// KeepOpen (duckdb) holds the file open between batches.
	KeepOpen *bool `yaml:"keep_open"`

	// The CRM sinks (hubspot, salesforce, webhook): see crm.go.
	CRM `yaml:",inline"`

	// BatchRecords, BatchBytes and Linger bound one batch.
	BatchRecords int           `yaml:"batch_records"`
	BatchBytes   ByteSize      `yaml:"batch_bytes"`
	Linger       time.Duration `yaml:"linger"`
	// Group is the Kafka consumer group; default tideline-<name>-<sink>.
	Group string `yaml:"group"`
}

// S3 is how a sink reaches an S3-compatible store. Credentials left empty
// come from AWS's environment variables and shared config.
type S3 struct {
	// Endpoint is the store's URL (for S3-compatible stores; empty: AWS).
	Endpoint string `yaml:"endpoint"`
	Region   string `yaml:"region"`
	// PathStyle addresses buckets as endpoint/bucket (most S3-compatible
	// stores need it).
	PathStyle       bool   `yaml:"path_style"`
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey Secret `yaml:"secret_access_key"`
	SessionToken    Secret `yaml:"session_token"`
}

// SinkTypes lists the sink types and, for each, the keys it takes beyond
// name, type, tables, batch_*, linger and group.
var SinkTypes = map[string][]string{
	"postgres": {"dsn", "table_format", "soft_delete"},
	"mysql":    {"dsn", "table_format", "soft_delete"},
	"duckdb":   {"path", "table_format", "soft_delete", "keep_open"},
	"parquet":  {"path", "s3"},
	"iceberg":  {"catalog", "warehouse", "s3", "soft_delete", "compact_every"},
	"hubspot":  append([]string{"url", "token", "batch_size", "rate_per_second"}, mappingKeys...),
	"salesforce": append([]string{"instance_url", "api_version", "batch_size", "rate_per_second", "token", "token_url",
		"client_id", "client_secret", "username", "private_key", "audience"}, mappingKeys...),
	"webhook": append([]string{"url", "secret", "headers", "batch_size", "rate_per_second"}, mappingKeys...),
}

// KeepOpenOn reports whether a DuckDB sink holds its file open.
func (s *Sink) KeepOpenOn() bool { return s.KeepOpen == nil || *s.KeepOpen }

func (s *Sink) defaults(pipeline string) {
	// A lake sink writes a file (an Iceberg snapshot) per batch: bigger
	// batches, fewer small files. DuckDB pays a large fixed cost per
	// statement (on an 800,000-row table, an ON CONFLICT update of 2,000
	// rows took 85 ms, of 10,000 rows 100 ms): bigger batches too. The
	// linger stays well under the consumer group's rebalance timeout
	// (20 s): a poll holds rebalances off until its batch is applied.
	records, bytes, linger := 10000, ByteSize(16<<20), 200*time.Millisecond
	switch s.Type {
	case "duckdb":
		records = 25_000
	case "parquet", "iceberg":
		records, bytes, linger = 250_000, 64<<20, 10*time.Second
	}
	if s.BatchRecords == 0 {
		s.BatchRecords = records
	}
	if s.BatchBytes == 0 {
		s.BatchBytes = bytes
	}
	if s.Linger == 0 {
		s.Linger = linger
	}
	if s.Group == "" {
		s.Group = "tideline-" + pipeline + "-" + s.Name
	}
	if s.Type == "iceberg" && s.CompactEvery == 0 {
		s.CompactEvery = 100
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

// storeURL checks a lake location: file:///dir or s3://bucket[/prefix]
// (a plain absolute directory too when dirOK).
func storeURL(v string, dirOK bool) error {
	if v == "" {
		return fmt.Errorf("is required (file:///dir or s3://bucket/prefix)")
	}
	if dirOK && strings.HasPrefix(v, "/") {
		return nil
	}
	_, err := objstore.Parse(v)
	return err
}

var (
	sinkNameRe    = regexp.MustCompile(`^[a-z0-9_-]{1,63}$`)
	tableFormatRe = regexp.MustCompile(`^[^.\s]+(\.[^.\s]+)?$`)
)

// set reports which type-specific keys hold a value.
func (s *Sink) set() map[string]bool {
	return map[string]bool{
		"dsn": s.DSN != "", "path": s.Path != "", "soft_delete": s.SoftDelete, "keep_open": s.KeepOpen != nil,
		"catalog": s.Catalog != "", "warehouse": s.Warehouse != "", "s3": s.S3 != nil, "compact_every": s.CompactEvery != 0 && s.Type != "iceberg",
		"url": s.URL != "", "token": s.Token != "", "object": s.Object != "", "id_property": s.IDProperty != "",
		"fields": len(s.Fields) > 0, "where": s.Where != "", "on_delete": s.OnDelete != "", "batch_size": s.BatchSize != 0,
		"rate_per_second": s.RatePerSecond != 0, "secret": s.Secret != "", "headers": len(s.Headers) > 0,
		"instance_url": s.InstanceURL != "", "api_version": s.APIVersion != "", "token_url": s.TokenURL != "",
		"client_id": s.ClientID != "", "client_secret": s.ClientSecret != "", "username": s.Username != "",
		"private_key": s.PrivateKey != "", "audience": s.Audience != "",
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
				add(p+"."+k, "is not used by a sink of type %s", s.Type)
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
		case "parquet":
			if err := storeURL(s.Path, false); err != nil {
				add(p+".path", "%v", err)
			}
		case "iceberg":
			if s.Catalog == "" && strings.HasPrefix(s.Warehouse, "s3://") {
				add(p+".catalog", "is required with an s3:// warehouse (a SQLite file, or a postgres:// URL)")
			} else if u, err := url.Parse(string(s.Catalog)); err == nil && u.Scheme != "" && u.Scheme != "postgres" && u.Scheme != "postgresql" && u.Scheme != "file" {
				add(p+".catalog", "%q: a SQLite file path, or a postgres:// URL", u.Scheme)
			}
			if err := storeURL(s.Warehouse, true); err != nil {
				add(p+".warehouse", "%v", err)
			}

		}
		for _, pr := range s.crmProblems() {
			add(p+"."+pr.Key, "%s", pr.Msg)
		}
		if s.S3 != nil && !strings.HasPrefix(s.Path, "s3://") && !strings.HasPrefix(s.Warehouse, "s3://") {
			add(p+".s3", "is only used with an s3:// %s", map[bool]string{true: "warehouse", false: "path"}[s.Type == "iceberg"])
		}
		if s.S3 != nil && s.S3.Endpoint != "" {
			if u, err := url.Parse(s.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				add(p+".s3.endpoint", "%q: want an http:// or https:// URL", s.S3.Endpoint)
			}
		}
		if s.S3 != nil && (s.S3.AccessKeyID == "") != (s.S3.SecretAccessKey == "") {
			add(p+".s3", "access_key_id and secret_access_key go together")
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
