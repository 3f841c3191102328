// Package config reads Tideline's YAML configuration: ${ENV} expansion,
// unknown keys rejected, defaults applied, and every problem reported at
// once with its key path.
package config

import (
	"fmt"
	"hash/crc32"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Embedded is the broker list that runs the in-process broker.
const Embedded = "embedded"

// Config is the whole file.
type Config struct {
	// Name identifies the pipeline: default slot, publication and topic
	// prefix, metric labels.
	Name   string `yaml:"name"`
	Source Source `yaml:"source"`
	// Sinks apply the change topics to targets (sinks.go).
	Sinks   []Sink  `yaml:"sinks"`
	Kafka   Kafka   `yaml:"kafka"`
	Capture Capture `yaml:"capture"`
	HTTP    HTTP    `yaml:"http"`
	Log     Log     `yaml:"log"`
}

// Source is the database to capture.
type Source struct {
	Type string `yaml:"type"`
	DSN  Secret `yaml:"dsn"`
	// Tables are schema.table patterns; '*' matches any run of characters
	// within one part.
	Tables   []string `yaml:"tables"`
	Snapshot string   `yaml:"snapshot"`
	// Slot and Publication default to tideline_<name>.
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`
	// StatusInterval is how often the confirmed position is sent to the
	// server (PostgreSQL, asking for a reply when idle) or stored (MySQL).
	StatusInterval time.Duration `yaml:"status_interval"`
	// ServerID is the replica id a MySQL source registers with; unique
	// among the server's replicas. Default: derived from the name.
	ServerID uint32 `yaml:"server_id"`
}

// Kafka is where changes go.
type Kafka struct {
	Brokers     []string `yaml:"brokers"`
	TopicPrefix string   `yaml:"topic_prefix"`
	ClientID    string   `yaml:"client_id"`
	// Compression is one of lz4, zstd, snappy, gzip, none.
	Compression string `yaml:"compression"`
	// Tombstones sends a null-valued record with the key after each delete,
	// so compacted topics forget the row.
	Tombstones *bool `yaml:"tombstones"`
	// Linger is how long the producer waits to fill a batch.
	Linger time.Duration `yaml:"linger"`
	// MaxMessageBytes bounds one produce batch (and so one record); the
	// topics' max.message.bytes must allow it.
	MaxMessageBytes ByteSize `yaml:"max_message_bytes"`
	Topics          Topics   `yaml:"topics"`
	// Embedded configures the in-process broker (brokers: [embedded]).
	Embedded EmbeddedBroker `yaml:"embedded"`
}

// Topics are the settings of topics Tideline creates.
type Topics struct {
	Partitions        int32             `yaml:"partitions"`
	ReplicationFactor int16             `yaml:"replication_factor"`
	Config            map[string]string `yaml:"config"`
}

// EmbeddedBroker configures the single-node in-process broker.
type EmbeddedBroker struct {
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// Retention and RetentionBytes (per partition) bound what it keeps.
	Retention      time.Duration `yaml:"retention"`
	RetentionBytes ByteSize      `yaml:"retention_bytes"`
}

// Capture tunes the pipeline between source and Kafka.
type Capture struct {
	// MaxInFlightBytes bounds encoded records not yet acked by Kafka; the
	// source stops reading when it is reached.
	MaxInFlightBytes ByteSize `yaml:"max_inflight_bytes"`
	// BatchRecords and BatchBytes bound one hand-off from source to
	// publisher.
	BatchRecords int      `yaml:"batch_records"`
	BatchBytes   ByteSize `yaml:"batch_bytes"`
	// Linger is how long a batch waits for more transactions once the
	// source has nothing more to read; 0 hands it over at once.
	Linger *time.Duration `yaml:"linger"`
}

// HTTP serves /metrics, /healthz, /readyz, the dashboard and /api.
type HTTP struct {
	Listen string `yaml:"listen"`
	// Token, when set, protects the dashboard and /api/* (bearer token).
	Token Secret `yaml:"token"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"` // json or console
}

// HasSource reports whether the config captures a source (a config with
// only sinks has none).
func (c *Config) HasSource() bool { return c.Source.Type != "" || len(c.Sinks) == 0 }

// TombstonesOn reports whether deletes are followed by a tombstone.
func (k *Kafka) TombstonesOn() bool { return k.Tombstones == nil || *k.Tombstones }

// IsEmbedded reports whether the brokers list asks for the embedded broker.
func (k *Kafka) IsEmbedded() bool { return len(k.Brokers) == 1 && k.Brokers[0] == Embedded }

// Defaults fills every unset key with its default. Validate should be
// called afterwards.
func (c *Config) Defaults() {
	safe := sanitize(c.Name)
	if c.Source.Snapshot == "" {
		c.Source.Snapshot = "initial"
	}
	if c.Source.Slot == "" {
		c.Source.Slot = "tideline_" + safe
	}
	if c.Source.Publication == "" {
		c.Source.Publication = "tideline_" + safe
	}
	if c.Source.ServerID == 0 {
		c.Source.ServerID = 1_000_000 + crc32.ChecksumIEEE([]byte(c.Name))%1_000_000_000
	}
	if c.Source.StatusInterval == 0 {
		c.Source.StatusInterval = 10 * time.Second
	}
	if len(c.Kafka.Brokers) == 0 {
		c.Kafka.Brokers = []string{Embedded}
	}
	if c.Kafka.TopicPrefix == "" {
		c.Kafka.TopicPrefix = c.Name
	}
	if c.Kafka.ClientID == "" {
		c.Kafka.ClientID = "tideline-" + c.Name
	}
	if c.Kafka.Compression == "" {
		c.Kafka.Compression = "lz4"
	}
	if c.Kafka.Linger == 0 {
		c.Kafka.Linger = 2 * time.Millisecond
	}
	if c.Kafka.MaxMessageBytes == 0 {
		c.Kafka.MaxMessageBytes = 1 << 20
	}
	if c.Kafka.Topics.Partitions == 0 {
		c.Kafka.Topics.Partitions = 1
	}
	if c.Kafka.Topics.ReplicationFactor == 0 {
		c.Kafka.Topics.ReplicationFactor = -1
	}
	if c.Kafka.Embedded.Listen == "" {
		c.Kafka.Embedded.Listen = "127.0.0.1:9092"
	}
	if c.Kafka.Embedded.DataDir == "" {
		c.Kafka.Embedded.DataDir = "./tideline-data/kafka"
	}
	if c.Kafka.Embedded.Retention == 0 {
		c.Kafka.Embedded.Retention = 24 * time.Hour
	}
	if c.Kafka.Embedded.RetentionBytes == 0 {
		c.Kafka.Embedded.RetentionBytes = 256 << 20
	}
	if c.Capture.MaxInFlightBytes == 0 {
		c.Capture.MaxInFlightBytes = 64 << 20
	}
	if c.Capture.BatchRecords == 0 {
		c.Capture.BatchRecords = 2048
	}
	if c.Capture.Linger == nil {
		d := time.Millisecond
		c.Capture.Linger = &d
	}
	if c.Capture.BatchBytes == 0 {
		c.Capture.BatchBytes = 1 << 20
	}
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = "127.0.0.1:8080"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	for i := range c.Sinks {
		c.Sinks[i].defaults(c.Name)
	}
}

var (
	identRe   = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)
	patternRe = regexp.MustCompile(`^[^.\s]+\.[^.\s]+$`)
)

func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Problem is one thing wrong with a config, at a key path.
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string { return p.Path + ": " + p.Msg }

// Problems is every problem found; it is an error.
type Problems []Problem

func (ps Problems) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d config problem(s):", len(ps))
	for _, p := range ps {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Validate checks the config, with defaults applied, and returns every
// problem at once (as Problems), or nil.
func (c *Config) Validate() error {
	var ps Problems
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Name == "" {
		add("name", "is required (it names the slot, the publication and the topics)")
	} else if !nameRe.MatchString(c.Name) {
		add("name", "%q: use letters, digits, '_', '.' or '-' (at most 100)", c.Name)
	}
	// A config with sinks and no source runs sinks only.
	if c.HasSource() {
		switch c.Source.Type {
		case "postgres":
			if c.Source.DSN == "" {
				add("source.dsn", "is required (postgres://user:pass@host:port/db)")
			} else if u, err := url.Parse(string(c.Source.DSN)); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
				add("source.dsn", "must be a postgres:// URL")
			} else if strings.Trim(u.Path, "/") == "" {
				add("source.dsn", "must name a database (postgres://host:port/DB)")
			}
		case "mysql":
			if c.Source.DSN == "" {
				add("source.dsn", "is required (mysql://user:pass@host:port/db)")
			} else if u, err := url.Parse(string(c.Source.DSN)); err != nil || u.Scheme != "mysql" || u.Host == "" {
				add("source.dsn", "must be a mysql://user:pass@host:port/db URL")
			} else if _, err := MySQLTLS(u.Query(), u.Hostname()); err != nil {
				// The reader the source connects with: what passes here
				// connects.
				add("source.dsn", "%v", err)
			}
		case "":
			add("source.type", "is required (postgres or mysql)")
		default:
			add("source.type", "%q is not a known source type (postgres or mysql)", c.Source.Type)
		}
		if len(c.Source.Tables) == 0 {
			add("source.tables", "list at least one schema.table (wildcards '*' allowed)")
		}
		for i, t := range c.Source.Tables {
			if !patternRe.MatchString(t) {
				add(fmt.Sprintf("source.tables[%d]", i), "%q is not schema.table", t)
			}
		}
		switch c.Source.Snapshot {
		case "initial", "never":
		default:
			add("source.snapshot", "%q: use initial or never", c.Source.Snapshot)
		}
		if !identRe.MatchString(c.Source.Slot) {
			add("source.slot", "%q: a slot name is 1-63 lower-case letters, digits or '_'", c.Source.Slot)
		}
		if !identRe.MatchString(c.Source.Publication) {
			add("source.publication", "%q: use 1-63 lower-case letters, digits or '_'", c.Source.Publication)
		}
		// The status doubles as the keepalive while back-pressure holds
		// reading; PostgreSQL drops a silent connection after
		// wal_sender_timeout (60s by default).
		if c.Source.StatusInterval < 100*time.Millisecond || c.Source.StatusInterval > 30*time.Second {
			add("source.status_interval", "%s: must be between 100ms and 30s (below half of PostgreSQL's wal_sender_timeout)", c.Source.StatusInterval)
		}
	}
	if len(c.Kafka.Brokers) == 0 {
		add("kafka.brokers", "list at least one host:port, or [embedded]")
	}
	for i, b := range c.Kafka.Brokers {
		if b == Embedded {
			if len(c.Kafka.Brokers) > 1 {
				add(fmt.Sprintf("kafka.brokers[%d]", i), "embedded cannot be mixed with other brokers")
			}
			continue
		}
		if _, _, err := net.SplitHostPort(b); err != nil {
			add(fmt.Sprintf("kafka.brokers[%d]", i), "%q is not host:port", b)
		}
	}
	if !validTopicPart(c.Kafka.TopicPrefix) {
		add("kafka.topic_prefix", "%q: use letters, digits, '.', '_' or '-'", c.Kafka.TopicPrefix)
	}
	switch c.Kafka.Compression {
	case "lz4", "zstd", "snappy", "gzip", "none":
	default:
		add("kafka.compression", "%q: use lz4, zstd, snappy, gzip or none", c.Kafka.Compression)
	}
	if c.Kafka.Linger < 0 || c.Kafka.Linger > time.Second {
		add("kafka.linger", "%s: must be between 0 and 1s", c.Kafka.Linger)
	}
	if c.Kafka.MaxMessageBytes < 1<<10 || c.Kafka.MaxMessageBytes > 1<<30 {
		add("kafka.max_message_bytes", "must be between 1KiB and 1GiB")
	}
	if c.Kafka.Topics.Partitions < 1 {
		add("kafka.topics.partitions", "must be at least 1")
	}
	if c.Kafka.Topics.ReplicationFactor < -1 || c.Kafka.Topics.ReplicationFactor == 0 {
		add("kafka.topics.replication_factor", "must be -1 (broker default) or at least 1")
	}
	if c.Kafka.IsEmbedded() {
		if _, p, err := net.SplitHostPort(c.Kafka.Embedded.Listen); err != nil {
			add("kafka.embedded.listen", "%q is not host:port", c.Kafka.Embedded.Listen)
		} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			add("kafka.embedded.listen", "%q: bad port", c.Kafka.Embedded.Listen)
		}
		if c.Kafka.Embedded.Retention < time.Minute {
			add("kafka.embedded.retention", "%s: must be at least 1m", c.Kafka.Embedded.Retention)
		}
		if c.Kafka.Embedded.RetentionBytes < 1<<20 {
			add("kafka.embedded.retention_bytes", "must be at least 1MiB")
		}
	}
	if c.Capture.MaxInFlightBytes < 1<<20 {
		add("capture.max_inflight_bytes", "must be at least 1MiB")
	}
	if c.Capture.BatchRecords < 1 {
		add("capture.batch_records", "must be at least 1")
	}
	if c.Capture.BatchBytes < 1<<10 || c.Capture.BatchBytes > c.Capture.MaxInFlightBytes {
		add("capture.batch_bytes", "must be between 1KiB and capture.max_inflight_bytes")
	}
	if l := *c.Capture.Linger; l < 0 || l > 100*time.Millisecond {
		add("capture.linger", "%s: must be between 0 and 100ms", l)
	}
	if c.HTTP.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			add("http.listen", "%q is not host:port (or off)", c.HTTP.Listen)
		}
	}
	if t := string(c.HTTP.Token); t != "" && len(t) < 16 {
		add("http.token", "is too short: use at least 16 characters (e.g. openssl rand -hex 16)")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		add("log.format", "%q: use json or console", c.Log.Format)
	}
	ps = append(ps, c.validateSinks()...)
	if len(ps) > 0 {
		return ps
	}
	return nil
}

func validTopicPart(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Secret is a string that never prints: String, GoString and MarshalText
// hide the password of a URL, or the whole value when it is not a URL (a
// token).
type Secret string

// String returns the value with the password of a URL replaced by "xxxxx",
// or "xxxxx" for a value that is not a URL.
func (s Secret) String() string {
	switch {
	case s == "":
		return ""
	case !strings.Contains(string(s), "://"):
		return "xxxxx"
	}
	return Redact(string(s))
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return s.String() }

// MarshalText keeps encoders from printing the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Redact hides the password in a URL-shaped string.
func Redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	if q := u.Query(); len(q) > 0 {
		for _, k := range []string{"password", "sslpassword", "sslkey"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// ByteSize is a size in bytes that reads "64MiB", "1GB", "512k" or a number.
type ByteSize int64

// ParseByteSize parses a size with an optional unit (B, KB, KiB, MB, MiB, GB,
// GiB; k/m/g are binary).
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s[:i]), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 64MiB)", s)
	}
	mult := map[string]int64{
		"": 1, "b": 1,
		"k": 1 << 10, "kb": 1000, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1000 * 1000, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1000 * 1000 * 1000, "gib": 1 << 30,
	}[strings.ToLower(strings.TrimSpace(s[i:]))]
	if mult == 0 {
		return 0, fmt.Errorf("%q has an unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)", s)
	}
	return ByteSize(n * mult), nil
}

// Load reads, expands, decodes, defaults and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, err
	}
	return c, nil
}
