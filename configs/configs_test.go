// Package configs_test checks the files under configs/ and the container stack around them
// (docker-compose.yml, Dockerfile) without a Docker engine, a Prometheus or a Grafana: the
// compose file is parsed and interpolated as Compose does, each Tideline service's config is
// loaded with pkg/config the way the container loads it, and every metric the Grafana dashboard
// queries is looked up in the registry observe.NewMetrics builds.
package configs_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// root is the repository, seen from this package's directory (go test runs in it).
const root = ".."

// --- docker-compose.yml -------------------------------------------------------------------

// composeFile is the part of the Compose format the stack uses. Services are decoded with
// KnownFields, so a misspelt key fails here as it would fail `docker compose up`; add a field
// when the stack starts using a new Compose key.
type composeFile struct {
	Services map[string]*service `yaml:"services"`
	Volumes  map[string]any      `yaml:"volumes"`
	Configs  map[string]struct {
		Content string `yaml:"content"`
		File    string `yaml:"file"`
	} `yaml:"configs"`
	// Extension fields (x-...), which hold YAML anchors.
	Ext map[string]any `yaml:",inline"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Hostname    string            `yaml:"hostname"`
	Command     command           `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Configs     []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"configs"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		Retries     int      `yaml:"retries"`
		StartPeriod string   `yaml:"start_period"`
	} `yaml:"healthcheck"`
	StopSignal      string `yaml:"stop_signal"`
	StopGracePeriod string `yaml:"stop_grace_period"`
	Restart         string `yaml:"restart"`
}

// command is a Compose command: a list, or a string split on spaces.
type command []string

func (c *command) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*c = strings.Fields(n.Value)
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*c = l
	return nil
}

// flag returns the value of --name=value or --name value in the command (name given without
// dashes; '-' and '_' are the same, as for mysqld).
func (c command) flag(name string) (string, bool) {
	norm := func(s string) string { return strings.ReplaceAll(strings.TrimLeft(s, "-"), "_", "-") }
	for i, a := range c {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		k, v, hasValue := strings.Cut(a, "=")
		if norm(k) != norm(name) {
			continue
		}
		if hasValue {
			return v, true
		}
		if i+1 < len(c) && !strings.HasPrefix(c[i+1], "-") {
			return c[i+1], true
		}
		return "", true
	}
	return "", false
}

// port is one published port, "127.0.0.1:HOST:CONTAINER".
type port struct {
	hostIP          string
	host, container int
}

func (s *service) ports(t *testing.T, name string) []port {
	t.Helper()
	var out []port
	for _, p := range s.Ports {
		spec := strings.TrimSuffix(p, "/tcp")
		parts := strings.Split(spec, ":")
		if len(parts) != 3 {
			t.Errorf("%s: port %q: want 127.0.0.1:HOST:CONTAINER (published on the host's loopback only)", name, p)
			continue
		}
		h, err1 := strconv.Atoi(parts[1])
		c, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || h < 1 || h > 65535 || c < 1 || c > 65535 {
			t.Errorf("%s: port %q: host and container ports must be numbers", name, p)
			continue
		}
		out = append(out, port{hostIP: parts[0], host: h, container: c})
	}
	return out
}

// containerPorts are the ports a service publishes, on the container's side.
func (s *service) containerPorts(t *testing.T, name string) []int {
	var out []int
	for _, p := range s.ports(t, name) {
		out = append(out, p.container)
	}
	return out
}

// mount returns the host path (relative to the repository) mounted at target, or "".
func (s *service) mount(target string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target && strings.HasPrefix(parts[0], ".") {
			return filepath.Join(root, filepath.FromSlash(parts[0]))
		}
	}
	return ""
}

// mountsUnder returns host path -> container path of the bind mounts at or below dir.
func (s *service) mountsUnder(dir string) map[string]string {
	out := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], ".") && (parts[1] == dir || strings.HasPrefix(parts[1], dir+"/")) {
			out[filepath.Join(root, filepath.FromSlash(parts[0]))] = parts[1]
		}
	}
	return out
}

// interpolateRe matches what Compose interpolates: $$ (a literal $), ${VAR}, ${VAR:-default},
// ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt} and $VAR.
var interpolateRe = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate expands s as Compose does in an empty environment (no .env, no variables set):
// `docker compose up` must work without any, so every variable needs a default.
func interpolate(s string) (string, error) {
	var err error
	out := interpolateRe.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sm := interpolateRe.FindStringSubmatch(m)
		name, op, arg := sm[1], sm[2], sm[3]
		if name == "" {
			name = sm[4]
		}
		switch op {
		case ":-", "-":
			return arg
		case ":+", "+":
			return ""
		}
		if err == nil {
			err = fmt.Errorf("${%s} has no default: `docker compose up` would need it set (use ${%s:-value})", name, name)
		}
		return m
	})
	return out, err
}

// interpolateNode interpolates every scalar value (not key) under n.
func interpolateNode(n *yaml.Node, errs *[]string) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			interpolateNode(c, errs)
		}
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			interpolateNode(n.Content[i], errs)
		}
	case yaml.ScalarNode:
		v, err := interpolate(n.Value)
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("line %d: %v", n.Line, err))
		}
		n.Value = v
	}
}

func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	var errs []string
	interpolateNode(&doc, &errs)
	for _, e := range errs {
		t.Errorf("docker-compose.yml: %s", e)
	}
	// Decode the interpolated tree with unknown keys rejected: re-encode it, since only a
	// yaml.Decoder has KnownFields.
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(&doc); err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	cf := &composeFile{}
	if err := dec.Decode(cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for k := range cf.Ext {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("docker-compose.yml: unknown top-level key %q (extension fields start with x-)", k)
		}
	}
	return cf
}

// tidelineServices are the services that run Tideline: those whose name starts with tideline.
func tidelineServices(cf *composeFile) []string {
	var out []string
	for name := range cf.Services {
		if strings.HasPrefix(name, "tideline") {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func TestCompose(t *testing.T) {
	cf := loadCompose(t)

	images := map[string]string{
		"postgres":   "postgres:",
		"mysql":      "mysql:8",
		"kafka":      "apache/kafka:",
		"prometheus": "prom/prometheus:",
		"grafana":    "grafana/grafana:",
	}
	for name, prefix := range images {
		s := cf.Services[name]
		if s == nil {
			t.Errorf("service %s is missing", name)
			continue
		}
		if !strings.HasPrefix(s.Image, prefix) {
			t.Errorf("%s: image %q, want %s...", name, s.Image, prefix)
		}
	}
	for name, s := range cf.Services {
		if s.Image != "" && (!strings.Contains(s.Image, ":") || strings.HasSuffix(s.Image, ":latest")) {
			t.Errorf("%s: image %q: pin a version, so that the stack does not change under its users", name, s.Image)
		}
	}
	if tl := tidelineServices(cf); len(tl) < 2 {
		t.Errorf("tideline services: %v, want one per source (PostgreSQL and MySQL)", tl)
	}

	// Published ports: on the loopback only (the databases have well-known passwords), and no
	// two on one host port.
	used := map[int]string{}
	for _, name := range sortedKeys(cf.Services) {
		for _, p := range cf.Services[name].ports(t, name) {
			if p.hostIP != "127.0.0.1" {
				t.Errorf("%s: port %d published on %q, want 127.0.0.1", name, p.host, p.hostIP)
			}
			if other, ok := used[p.host]; ok {
				t.Errorf("%s: host port %d is also published by %s", name, p.host, other)
			}
			used[p.host] = name
		}
	}

	if s := cf.Services["postgres"]; s != nil {
		if !slices.Contains(s.Command, "wal_level=logical") {
			t.Errorf("postgres: command %q lacks -c wal_level=logical", s.Command)
		}
		if s.Environment["POSTGRES_DB"] == "" || s.Environment["POSTGRES_PASSWORD"] == "" {
			t.Errorf("postgres: POSTGRES_DB and POSTGRES_PASSWORD must be set")
		}
	}
	if s := cf.Services["mysql"]; s != nil {
		want := map[string]string{
			"binlog-format": "ROW", "binlog-row-image": "FULL",
			"gtid-mode": "ON", "enforce-gtid-consistency": "ON",
		}
		for k, v := range want {
			if got, ok := s.Command.flag(k); !ok || !strings.EqualFold(got, v) {
				t.Errorf("mysql: command %q: want --%s=%s", s.Command, k, v)
			}
		}
		if _, ok := s.Command.flag("log-bin"); !ok {
			t.Errorf("mysql: command %q lacks --log-bin", s.Command)
		}
		if id, _ := s.Command.flag("server-id"); id == "" || id == "0" {
			t.Errorf("mysql: command %q: want --server-id=N (N > 0): a server without one refuses replicas", s.Command)
		}
		if s.Environment["MYSQL_DATABASE"] == "" || s.Environment["MYSQL_ROOT_PASSWORD"] == "" {
			t.Errorf("mysql: MYSQL_DATABASE and MYSQL_ROOT_PASSWORD must be set")
		}
	}
	if s := cf.Services["kafka"]; s != nil {
		env := s.Environment
		roles := strings.Split(env["KAFKA_PROCESS_ROLES"], ",")
		if !slices.Contains(roles, "broker") || !slices.Contains(roles, "controller") {
			t.Errorf("kafka: KAFKA_PROCESS_ROLES %q, want broker,controller (KRaft, one node)", env["KAFKA_PROCESS_ROLES"])
		}
		for _, k := range []string{"KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_CONTROLLER_LISTENER_NAMES", "CLUSTER_ID", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"} {
			if env[k] == "" {
				t.Errorf("kafka: %s is not set (KRaft needs it)", k)
			}
		}
		if env["KAFKA_ZOOKEEPER_CONNECT"] != "" {
			t.Errorf("kafka: KAFKA_ZOOKEEPER_CONNECT is set; the broker runs in KRaft mode")
		}
		// One broker: every internal topic must fit on it.
		for _, k := range []string{"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_DEFAULT_REPLICATION_FACTOR"} {
			if env[k] != "1" {
				t.Errorf("kafka: %s = %q, want 1 on a single broker", k, env[k])
			}
		}
	}
	for _, name := range []string{"postgres", "mysql", "kafka"} {
		if s := cf.Services[name]; s != nil && (s.Healthcheck == nil || len(s.Healthcheck.Test) == 0) {
			t.Errorf("%s: no healthcheck; Tideline waits for service_healthy", name)
		}
	}
	for name, s := range cf.Services {
		for dep := range s.DependsOn {
			if cf.Services[dep] == nil {
				t.Errorf("%s: depends on %s, which is not a service", name, dep)
			}
		}
		for _, c := range s.Configs {
			if _, ok := cf.Configs[c.Source]; !ok {
				t.Errorf("%s: config %q is not defined under configs:", name, c.Source)
			}
		}
		for _, v := range s.Volumes {
			src := strings.Split(v, ":")[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(src))); err != nil {
					t.Errorf("%s: mounts %s: %v", name, src, err)
				}
			} else if _, ok := cf.Volumes[src]; !ok {
				t.Errorf("%s: volume %q is not declared under volumes:", name, src)
			}
		}
	}
}

// --- the Tideline services and their configs ----------------------------------------------

// tideline is one Tideline service with its loaded config.
type tideline struct {
	service string
	cfg     *config.Config
	path    string // the config file on the host
}

var envRefRe = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)`)

// loadTideline loads the config a Tideline service mounts, as the container would: with the
// service's environment and nothing else.
func loadTideline(t *testing.T, cf *composeFile, name string) *tideline {
	t.Helper()
	s := cf.Services[name]
	if b, _ := s.Build.(string); b != "." {
		if m, ok := s.Build.(map[string]any); !ok || m["context"] != "." {
			t.Errorf("%s: build %v, want this repository (.)", name, s.Build)
		}
	}
	cfgPath, ok := s.Command.flag("config")
	if !ok {
		cfgPath, ok = s.Command.flag("c")
	}
	if !ok || cfgPath == "" || len(s.Command) == 0 || s.Command[0] != "run" {
		t.Errorf("%s: command %q, want run --config FILE", name, s.Command)
		return nil
	}
	host := s.mount(cfgPath)
	if host == "" {
		t.Errorf("%s: nothing from this repository is mounted at %s (the --config file)", name, cfgPath)
		return nil
	}
	data, err := os.ReadFile(host)
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return nil
	}
	// The container's environment is the service's: set those, unset every other variable the
	// file names, so that a variable missing from the service fails here as it would there.
	for _, m := range envRefRe.FindAllStringSubmatch(string(data), -1) {
		if v, ok := s.Environment[m[1]]; ok {
			t.Setenv(m[1], v)
		} else {
			t.Setenv(m[1], "")
			os.Unsetenv(m[1])
		}
	}
	cfg, err := config.Parse(data)
	if err != nil {
		t.Errorf("%s: %s: %v", name, host, err)
		return nil
	}
	return &tideline{service: name, cfg: cfg, path: host}
}

// endpoint is a database a DSN names.
type endpoint struct {
	service, user, password, db string
	port                        int
}

// dsnEndpoint checks that dsn names a compose service on a port it listens on.
func dsnEndpoint(t *testing.T, cf *composeFile, who, key, dsn string) (endpoint, bool) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Hostname() == "" {
		t.Errorf("%s: %s: not a URL with a host", who, key)
		return endpoint{}, false
	}
	e := endpoint{service: u.Hostname(), user: u.User.Username(), db: strings.Trim(u.Path, "/")}
	e.password, _ = u.User.Password()
	s := cf.Services[e.service]
	if s == nil {
		t.Errorf("%s: %s: host %q is not a compose service", who, key, e.service)
		return e, false
	}
	e.port, _ = strconv.Atoi(u.Port())
	if !slices.Contains(s.containerPorts(t, e.service), e.port) {
		t.Errorf("%s: %s: port %q is not a port %s listens on (%v)", who, key, u.Port(), e.service, s.containerPorts(t, e.service))
	}
	return e, true
}

// initSQL is the SQL a database service runs when its volume is initialised: the compose
// configs (inline, or files) and bind-mounted files under /docker-entrypoint-initdb.d.
func initSQL(t *testing.T, cf *composeFile, svc string) string {
	t.Helper()
	const dir = "/docker-entrypoint-initdb.d"
	var b strings.Builder
	read := func(file string) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Errorf("%s: %v", svc, err)
		}
		b.Write(data)
		b.WriteString("\n")
	}
	for _, c := range cf.Services[svc].Configs {
		if strings.HasPrefix(c.Target, dir+"/") {
			if f := cf.Configs[c.Source].File; f != "" {
				read(filepath.Join(root, filepath.FromSlash(f)))
			}
			b.WriteString(cf.Configs[c.Source].Content)
			b.WriteString("\n")
		}
	}
	for host := range cf.Services[svc].mountsUnder(dir) {
		if fi, err := os.Stat(host); err == nil && fi.IsDir() {
			files, _ := filepath.Glob(filepath.Join(host, "*.sql"))
			for _, f := range files {
				read(f)
			}
			continue
		}
		read(host)
	}
	return b.String()
}

// statements returns the init SQL's statements that match re (case-insensitive, across lines).
func statements(sql, re string) []string {
	return regexp.MustCompile(`(?is)`+re).FindAllString(sql, -1)
}

// checkPostgres checks that the compose PostgreSQL lets e in: the user exists with that
// password (or is the superuser) and the database exists.
func checkPostgres(t *testing.T, cf *composeFile, who string, e endpoint) (superuser bool, sql string) {
	t.Helper()
	env := cf.Services[e.service].Environment
	sql = initSQL(t, cf, e.service)
	superUser := env["POSTGRES_USER"]
	if superUser == "" {
		superUser = "postgres"
	}
	if e.user == superUser {
		if e.password != env["POSTGRES_PASSWORD"] {
			t.Errorf("%s: the password of %s is not the service's POSTGRES_PASSWORD", who, e.user)
		}
		superuser = true
	} else if len(statements(sql, `CREATE\s+(ROLE|USER)\s+"?`+regexp.QuoteMeta(e.user)+`"?\s[^;]*\bLOGIN\b[^;]*PASSWORD\s+'`+regexp.QuoteMeta(e.password)+`'`)) == 0 {
		t.Errorf("%s: the init SQL of %s creates no role %s WITH LOGIN ... PASSWORD with the password Tideline uses", who, e.service, e.user)
	}
	if e.db != env["POSTGRES_DB"] && len(statements(sql, `CREATE\s+DATABASE\s+"?`+regexp.QuoteMeta(e.db)+`\b`)) == 0 {
		t.Errorf("%s: database %s is neither POSTGRES_DB nor created by the init SQL of %s", who, e.db, e.service)
	}
	return superuser, sql
}

// checkMySQL checks that the compose MySQL lets e in with the privileges a source needs.
func checkMySQL(t *testing.T, cf *composeFile, who string, e endpoint) (sql string) {
	t.Helper()
	env := cf.Services[e.service].Environment
	sql = initSQL(t, cf, e.service)
	if e.user == "root" {
		if e.password != env["MYSQL_ROOT_PASSWORD"] {
			t.Errorf("%s: the password of root is not the service's MYSQL_ROOT_PASSWORD", who)
		}
	} else {
		user := `'` + regexp.QuoteMeta(e.user) + `'@'%'`
		if len(statements(sql, `CREATE\s+USER\s+`+user+`\s+IDENTIFIED\s+BY\s+'`+regexp.QuoteMeta(e.password)+`'`)) == 0 {
			t.Errorf("%s: the init SQL of %s creates no user '%s'@'%%' IDENTIFIED BY the password Tideline uses", who, e.service, e.user)
		}
		grants := strings.Join(statements(sql, `GRANT\s[^;]*\sTO\s+`+user), ";\n")
		// docs/operations.md, "Preparing MySQL or MariaDB".
		for _, p := range []string{`REPLICATION\s+SLAVE`, `REPLICATION\s+CLIENT`, `RELOAD`} {
			if !regexp.MustCompile(`(?is)GRANT\s[^;]*\b` + p + `\b[^;]*\sON\s+\*\.\*`).MatchString(grants) {
				t.Errorf("%s: the init SQL of %s does not grant %s ON *.* to %s", who, e.service, strings.ReplaceAll(p, `\s+`, " "), e.user)
			}
		}
		if !regexp.MustCompile(`(?is)GRANT\s[^;]*\bSELECT\b[^;]*\sON\s+(\*|` + regexp.QuoteMeta(e.db) + `)\.\*`).MatchString(grants) {
			t.Errorf("%s: the init SQL of %s does not grant SELECT ON %s.* to %s", who, e.service, e.db, e.user)
		}
	}
	if e.db != env["MYSQL_DATABASE"] && len(statements(sql, `CREATE\s+DATABASE\s+`+regexp.QuoteMeta(e.db)+`\b`)) == 0 {
		t.Errorf("%s: database %s is neither MYSQL_DATABASE nor created by the init SQL of %s", who, e.db, e.service)
	}
	return sql
}

// checkTables checks that the init SQL creates every table the source names outright.
func checkTables(t *testing.T, who, sql string, patterns []string) {
	t.Helper()
	for _, p := range patterns {
		if strings.Contains(p, "*") {
			continue
		}
		if len(statements(sql, `CREATE\s+TABLE\s+`+regexp.QuoteMeta(p)+`\s*\(`)) == 0 {
			t.Errorf("%s: source.tables names %s, which the init SQL does not create (as CREATE TABLE %s)", who, p, p)
		}
	}
}

func TestComposeTideline(t *testing.T) {
	cf := loadCompose(t)
	var tls []*tideline
	for _, name := range tidelineServices(cf) {
		if tl := loadTideline(t, cf, name); tl != nil {
			tls = append(tls, tl)
		}
	}
	if t.Failed() {
		return
	}
	for _, tl := range tls {
		var sinks []string
		for _, s := range tl.cfg.Sinks {
			sinks = append(sinks, s.Name+" ("+s.Type+")")
		}
		t.Logf("%s: %s: pipeline %s, %s source %s, brokers %v, sinks %v, http %s", tl.service, tl.path, tl.cfg.Name,
			tl.cfg.Source.Type, config.Redact(string(tl.cfg.Source.DSN)), tl.cfg.Kafka.Brokers, sinks, tl.cfg.HTTP.Listen)
	}
	kafkaAdvertised := cf.Services["kafka"].Environment["KAFKA_ADVERTISED_LISTENERS"]
	sources := map[string]bool{}
	for _, tl := range tls {
		s, c, who := cf.Services[tl.service], tl.cfg, tl.service
		needs := func(dep string) {
			if s.DependsOn[dep].Condition != "service_healthy" {
				t.Errorf("%s: uses %s but does not depend on it with condition service_healthy", who, dep)
			}
		}

		// HTTP: on every interface, on a port that is published (Prometheus and the host).
		host, p, err := net.SplitHostPort(c.HTTP.Listen)
		if err != nil || host != "0.0.0.0" {
			t.Errorf("%s: http.listen %q, want 0.0.0.0:PORT (reachable from the host and Prometheus)", who, c.HTTP.Listen)
		} else if n, _ := strconv.Atoi(p); !slices.Contains(s.containerPorts(t, who), n) {
			t.Errorf("%s: http.listen port %s is not published (ports %q)", who, p, s.Ports)
		}

		// Kafka: the compose broker, by its advertised in-network listener.
		if c.Kafka.IsEmbedded() {
			t.Errorf("%s: kafka.brokers is the embedded broker; use the kafka service", who)
		}
		for _, b := range c.Kafka.Brokers {
			bh, _, err := net.SplitHostPort(b)
			if err != nil || bh != "kafka" {
				t.Errorf("%s: kafka.brokers %q: want kafka:PORT", who, b)
				continue
			}
			if !regexp.MustCompile(`(^|,)[A-Z_]+://` + regexp.QuoteMeta(b) + `(,|$)`).MatchString(kafkaAdvertised) {
				t.Errorf("%s: kafka.brokers %q is not one of the broker's advertised listeners %q", who, b, kafkaAdvertised)
			}
		}
		needs("kafka")

		// The source: a compose database that lets the user in with what the source needs.
		e, ok := dsnEndpoint(t, cf, who, "source.dsn", string(c.Source.DSN))
		if ok {
			needs(e.service)
			key := e.service + "/" + e.db + "/" + c.Source.Slot
			switch c.Source.Type {
			case "postgres":
				superuser, sql := checkPostgres(t, cf, who, e)
				if !superuser {
					if len(statements(sql, `CREATE\s+ROLE\s+`+regexp.QuoteMeta(e.user)+`\s[^;]*\bREPLICATION\b`)) == 0 {
						t.Errorf("%s: role %s lacks the REPLICATION attribute", who, e.user)
					}
					// Only the tables' owner may create the publication: the init SQL does.
					if len(statements(sql, `CREATE\s+PUBLICATION\s+`+regexp.QuoteMeta(c.Source.Publication)+`\s`)) == 0 {
						t.Errorf("%s: the init SQL of %s does not create the publication %s, and %s does not own the tables", who, e.service, c.Source.Publication, e.user)
					}
				}
				checkTables(t, who, sql, c.Source.Tables)
				if e.db != cf.Services[e.service].Environment["POSTGRES_DB"] {
					t.Errorf("%s: captures database %s, but the init SQL (tables, publication) runs in POSTGRES_DB", who, e.db)
				}
			case "mysql":
				sql := checkMySQL(t, cf, who, e)
				checkTables(t, who, sql, c.Source.Tables)
				serverID, _ := cf.Services[e.service].Command.flag("server-id")
				if strconv.FormatUint(uint64(c.Source.ServerID), 10) == serverID {
					t.Errorf("%s: source.server_id %d is the server's own --server-id", who, c.Source.ServerID)
				}
				key = fmt.Sprintf("%s/server_id=%d", e.service, c.Source.ServerID)
			default:
				t.Errorf("%s: source.type %q", who, c.Source.Type)
			}
			// Two pipelines on one slot (or one MySQL replica id) take turns failing.
			if sources[key] {
				t.Errorf("%s: another Tideline service captures %s", who, key)
			}
			sources[key] = true
		}

		// Sinks: compose databases that let the user in and where it may create schemas.
		for i, sk := range c.Sinks {
			if sk.Type == "duckdb" {
				continue
			}
			e, ok := dsnEndpoint(t, cf, who, fmt.Sprintf("sinks[%d].dsn", i), string(sk.DSN))
			if !ok {
				continue
			}
			needs(e.service)
			switch sk.Type {
			case "postgres":
				superuser, sql := checkPostgres(t, cf, who, e)
				if !superuser && len(statements(sql, `CREATE\s+DATABASE\s+`+regexp.QuoteMeta(e.db)+`\s+OWNER\s+"?`+regexp.QuoteMeta(e.user)+`\b`)) == 0 {
					t.Errorf("%s: sinks[%d]: %s must own database %s to create the target schemas and tables", who, i, e.user, e.db)
				}
			case "mysql":
				checkMySQL(t, cf, who, e)
			}
		}
	}

	// The pipelines share one broker, one Prometheus and one Grafana: their topics and metric
	// labels must not collide.
	unique := func(what string, value func(*tideline) []string) {
		seen := map[string]string{}
		for _, tl := range tls {
			for _, v := range value(tl) {
				if other, ok := seen[v]; ok {
					t.Errorf("%s: %s %q is also %s's", tl.service, what, v, other)
				}
				seen[v] = tl.service
			}
		}
	}
	unique("name (the pipeline label)", func(tl *tideline) []string { return []string{tl.cfg.Name} })
	unique("kafka.topic_prefix", func(tl *tideline) []string { return []string{tl.cfg.Kafka.TopicPrefix} })
	unique("sink name (the sink label)", func(tl *tideline) []string {
		var out []string
		for _, s := range tl.cfg.Sinks {
			out = append(out, s.Name)
		}
		return out
	})
	unique("sink target table", func(tl *tideline) []string {
		var out []string
		for _, s := range tl.cfg.Sinks {
			out = append(out, string(s.DSN)+s.Path+" "+s.TableFormat)
		}
		return out
	})
}

// --- Prometheus ---------------------------------------------------------------------------

type promConfig struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
	} `yaml:"global"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func TestComposePrometheus(t *testing.T) {
	cf := loadCompose(t)
	s := cf.Services["prometheus"]
	if s == nil {
		t.Fatal("no prometheus service")
	}
	file, _ := s.Command.flag("config.file")
	if file == "" {
		file = "/etc/prometheus/prometheus.yml" // the image's default
	}
	host := s.mount(file)
	if filepath.Clean(host) != filepath.Join(root, "configs", "prometheus.yml") {
		t.Fatalf("prometheus: mounts %q at %s, want ./configs/prometheus.yml", host, file)
	}
	data, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	var pc promConfig
	if err := yaml.Unmarshal(data, &pc); err != nil {
		t.Fatalf("%s: %v", host, err)
	}
	if d, err := time.ParseDuration(pc.Global.ScrapeInterval); err != nil || d > time.Minute {
		t.Errorf("%s: global.scrape_interval %q, want a duration of at most 1m", host, pc.Global.ScrapeInterval)
	}
	targets := map[string]bool{}
	jobs := map[string]bool{}
	for _, sc := range pc.ScrapeConfigs {
		if jobs[sc.JobName] {
			t.Errorf("%s: job_name %q appears twice", host, sc.JobName)
		}
		jobs[sc.JobName] = true
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				h, _, err := net.SplitHostPort(tg)
				if err != nil || (h != "localhost" && cf.Services[h] == nil) {
					t.Errorf("%s: job %s: target %q is not a compose service's host:port", host, sc.JobName, tg)
				}
				if sc.MetricsPath == "" || sc.MetricsPath == "/metrics" {
					targets[tg] = true
				}
			}
		}
	}
	for _, name := range tidelineServices(cf) {
		want := name + ":8080"
		if !targets[want] {
			t.Errorf("%s: no job scrapes %s/metrics", host, want)
		}
	}
}

// --- Grafana ------------------------------------------------------------------------------

func TestComposeGrafana(t *testing.T) {
	cf := loadCompose(t)
	s := cf.Services["grafana"]
	if s == nil {
		t.Fatal("no grafana service")
	}
	env := s.Environment
	if env["GF_AUTH_ANONYMOUS_ENABLED"] != "true" && env["GF_SECURITY_ADMIN_PASSWORD"] == "" {
		t.Errorf("grafana: neither anonymous access nor an admin password (GF_SECURITY_ADMIN_PASSWORD)")
	}
	if env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" && env["GF_AUTH_ANONYMOUS_ORG_ROLE"] != "Viewer" {
		t.Errorf("grafana: anonymous users get role %q, want Viewer", env["GF_AUTH_ANONYMOUS_ORG_ROLE"])
	}
	provDir := env["GF_PATHS_PROVISIONING"]
	if provDir == "" {
		provDir = "/etc/grafana/provisioning"
	}
	prov := s.mount(provDir)
	if filepath.Clean(prov) != filepath.Join(root, "configs", "grafana", "provisioning") {
		t.Fatalf("grafana: mounts %q at %s, want ./configs/grafana/provisioning", prov, provDir)
	}

	// Datasources: the compose Prometheus, by its service name and container port.
	var prometheusDS int
	files, _ := filepath.Glob(filepath.Join(prov, "datasources", "*.yaml"))
	for _, f := range files {
		var ds struct {
			APIVersion  int `yaml:"apiVersion"`
			Datasources []struct {
				Name, Type, URL, UID string
				JSONData             map[string]any `yaml:"jsonData"`
			} `yaml:"datasources"`
		}
		if err := decodeYAMLFile(f, &ds); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds.Datasources {
			if d.Type != "prometheus" {
				continue
			}
			prometheusDS++
			u, err := url.Parse(d.URL)
			if err != nil || u.Hostname() != "prometheus" || !slices.Contains(cf.Services["prometheus"].containerPorts(t, "prometheus"), atoi(u.Port())) {
				t.Errorf("%s: datasource %s: url %q, want http://prometheus:<its port>", f, d.Name, d.URL)
			}
		}
	}
	if prometheusDS == 0 {
		t.Errorf("grafana: no Prometheus datasource under %s/datasources", prov)
	}

	// Dashboards: a file provider whose path holds the mounted configs/grafana/tideline.json.
	files, _ = filepath.Glob(filepath.Join(prov, "dashboards", "*.yaml"))
	var loaded bool
	for _, f := range files {
		var dp struct {
			APIVersion int `yaml:"apiVersion"`
			Providers  []struct {
				Name, Type string
				Options    struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		if err := decodeYAMLFile(f, &dp); err != nil {
			t.Fatal(err)
		}
		for _, p := range dp.Providers {
			if p.Type != "file" {
				continue
			}
			for hostPath, target := range s.mountsUnder(p.Options.Path) {
				if filepath.Clean(hostPath) == filepath.Join(root, "configs", "grafana", "tideline.json") && path.Ext(target) == ".json" {
					loaded = true
				}
			}
		}
	}
	if !loaded {
		t.Errorf("grafana: no dashboard provider loads ./configs/grafana/tideline.json (mount it under a file provider's options.path)")
	}
	if home := env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" && s.mount(home) == "" {
		t.Errorf("grafana: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH %s is not mounted", home)
	}
}

// --- Dockerfile ---------------------------------------------------------------------------

// debianRelease maps the names images use for a Debian release to its number.
var debianRelease = map[string]string{"bookworm": "12", "debian12": "12", "trixie": "13", "debian13": "13"}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.EqualFold(f[0], "FROM") {
			froms = append(froms, f[1])
		}
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a build stage and a runtime stage", len(froms))
	}
	// The DuckDB sink needs cgo, so the binary is linked against the builder's glibc and
	// libstdc++: the runtime must be the same Debian release (or newer).
	release := func(image string) string {
		for name, n := range debianRelease {
			if strings.Contains(image, name) {
				return n
			}
		}
		return ""
	}
	build, run := froms[0], froms[len(froms)-1]
	if release(build) == "" || release(build) > release(run) {
		t.Errorf("Dockerfile: builder %s and runtime %s: name the Debian release of both, the runtime's no older", build, run)
	}
	if strings.Contains(run, "static") || strings.Contains(run, "scratch") || strings.Contains(run, "alpine") {
		t.Errorf("Dockerfile: runtime %s has no glibc/libstdc++, which the cgo (DuckDB) binary needs", run)
	}
	if !strings.Contains(string(data), "CGO_ENABLED=1") {
		t.Errorf("Dockerfile: the build must set CGO_ENABLED=1 (the DuckDB sink)")
	}
	if !regexp.MustCompile(`(?m)^USER\s+\S*nonroot`).Match(data) {
		t.Errorf("Dockerfile: the runtime must run as a non-root user")
	}
}

// --- the Grafana dashboard ----------------------------------------------------------------

// family is a metric the registry exports.
type family struct {
	typ    dto.MetricType
	labels map[string]bool
}

// registryFamilies returns the metric families observe.NewMetrics registers. Every vector of
// Metrics is touched (with as many label values as it takes) so that it is gathered with its
// label names; Describe then checks nothing was missed.
func registryFamilies(t *testing.T) map[string]family {
	t.Helper()
	m := observe.NewMetrics()
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		get := f.MethodByName("GetMetricWithLabelValues")
		if !get.IsValid() {
			continue
		}
		touched := false
		for n := 0; n <= 10 && !touched; n++ {
			args := make([]reflect.Value, n)
			for j := range args {
				args[j] = reflect.ValueOf("x")
			}
			out := get.Call(args)
			touched = out[1].IsNil()
		}
		if !touched {
			t.Fatalf("observe.Metrics.%s: no label count works", v.Type().Field(i).Name)
		}
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]family{}
	for _, mf := range fams {
		fam := family{typ: mf.GetType(), labels: map[string]bool{}}
		for _, met := range mf.GetMetric() {
			for _, lp := range met.GetLabel() {
				fam.labels[lp.GetName()] = true
			}
		}
		out[mf.GetName()] = fam
	}
	// A collector registered outside the Metrics fields would not have been touched.
	descs := make(chan *prometheus.Desc)
	go func() { m.Registry.Describe(descs); close(descs) }()
	nameRe := regexp.MustCompile(`fqName: "([^"]+)"`)
	described := 0
	for d := range descs {
		sm := nameRe.FindStringSubmatch(d.String())
		if sm == nil || !strings.HasPrefix(sm[1], "tideline_") {
			continue
		}
		described++
		if _, ok := out[sm[1]]; !ok {
			t.Errorf("%s is registered but was not gathered: make it a field of observe.Metrics", sm[1])
		}
	}
	if described == 0 {
		t.Fatal("the registry describes no tideline_ metric (has prometheus.Desc.String changed?)")
	}
	return out
}

// promQL is what an expression uses: metric names, label names in matchers (per metric) and
// in clauses (by, without, on, ignoring, group_left, group_right), and dashboard variables.
type promQL struct {
	metrics  []string
	matchers map[string][]string
	clauses  map[string][]string
	vars     []string
}

var matcherRe = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')`)

// keywords are PromQL words that are not metric names where an identifier may stand.
var keywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true,
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "stddev": true, "stdvar": true,
	"group": true, "topk": true, "bottomk": true, "quantile": true, "count_values": true,
	"limitk": true, "limit_ratio": true, "inf": true, "nan": true,
}

var varRe = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

// parsePromQL scans an expression: enough of PromQL's lexical structure (strings, matchers,
// ranges, grouping clauses, function calls) to tell metric names and label names apart.
func parsePromQL(expr string) (promQL, error) {
	q := promQL{matchers: map[string][]string{}, clauses: map[string][]string{}}
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
	}
	skipSpace := func(i int) int {
		for i < len(expr) && strings.IndexByte(" \t\r\n", expr[i]) >= 0 {
			i++
		}
		return i
	}
	// closing returns the index of the byte closing the string or bracket opened at i
	// (brackets do not nest where this is used: matchers, ranges, grouping lists).
	closing := func(i int) (int, error) {
		open := expr[i]
		if open == '"' || open == '\'' || open == '`' {
			return closingQuote(expr, i)
		}
		end := map[byte]byte{'(': ')', '[': ']', '{': '}'}[open]
		for j := i + 1; j < len(expr); j++ {
			switch expr[j] {
			case end:
				return j, nil
			case '"', '\'', '`':
				k, err := closingQuote(expr, j)
				if err != nil {
					return 0, err
				}
				j = k
			}
		}
		return 0, fmt.Errorf("unclosed %c at %d", open, i)
	}
	last := "" // the metric name just read, for a matcher block that follows it
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"' || c == '\'' || c == '`':
			j, err := closing(i)
			if err != nil {
				return q, err
			}
			q.vars = append(q.vars, varsIn(expr[i:j])...)
			i, last = j+1, ""
		case c == '[':
			j, err := closing(i)
			if err != nil {
				return q, err
			}
			q.vars = append(q.vars, varsIn(expr[i:j])...)
			i, last = j+1, ""
		case c == '$':
			sm := varRe.FindStringSubmatch(expr[i:])
			if sm == nil {
				return q, fmt.Errorf("stray $ at %d", i)
			}
			q.vars = append(q.vars, sm[1])
			i += len(sm[0])
			if i < len(expr) && expr[i] == '}' {
				i++
			}
			last = ""
		case c == '{':
			j, err := closing(i)
			if err != nil {
				return q, err
			}
			body := expr[i+1 : j]
			for _, m := range matcherRe.FindAllStringSubmatch(body, -1) {
				q.matchers[last] = append(q.matchers[last], m[1])
				q.vars = append(q.vars, varsIn(m[3])...)
			}
			if last == "" {
				return q, fmt.Errorf("a selector without a metric name at %d", i)
			}
			i, last = j+1, ""
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.') {
				i++
			}
			last = ""
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word, next := expr[i:j], skipSpace(j)
			i, last = j, ""
			switch {
			case word == "by" || word == "without" || word == "on" || word == "ignoring" || word == "group_left" || word == "group_right":
				if next < len(expr) && expr[next] == '(' {
					k, err := closing(next)
					if err != nil {
						return q, err
					}
					for _, l := range strings.Split(expr[next+1:k], ",") {
						if l = strings.TrimSpace(l); l != "" {
							q.clauses[word] = append(q.clauses[word], l)
						}
					}
					i = k + 1
				}
			case next < len(expr) && expr[next] == '(', keywords[strings.ToLower(word)]:
				// A function call or an operator.
			default:
				q.metrics = append(q.metrics, word)
				last = word
			}
		default:
			i++
			last = ""
		}
	}
	return q, nil
}

// closingQuote returns the index of the quote closing the string opened at s[i].
func closingQuote(s string, i int) (int, error) {
	open := s[i]
	for j := i + 1; j < len(s); j++ {
		if s[j] == '\\' && open != '`' {
			j++
		} else if s[j] == open {
			return j, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d", i)
}

func varsIn(s string) []string {
	var out []string
	for _, m := range varRe.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// histogramSuffixes are the series a histogram exports (none has the histogram's own name).
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// resolve maps a series name to its family: a histogram's _bucket, _sum and _count series belong
// to the histogram; a histogram's own name is no series at all.
func resolve(fams map[string]family, name string) (family, string, error) {
	if f, ok := fams[name]; ok {
		if f.typ == dto.MetricType_HISTOGRAM {
			return f, name, fmt.Errorf("%s is a histogram: query %s_bucket, _sum or _count", name, name)
		}
		return f, name, nil
	}
	for _, suf := range histogramSuffixes {
		base, ok := strings.CutSuffix(name, suf)
		if !ok {
			continue
		}
		if f, ok := fams[base]; ok && f.typ == dto.MetricType_HISTOGRAM {
			if suf == "_bucket" {
				f = family{typ: f.typ, labels: withLabel(f.labels, "le")}
			}
			return f, base, nil
		}
	}
	return family{}, "", fmt.Errorf("%s is not a metric observe.NewMetrics registers", name)
}

func withLabel(m map[string]bool, l string) map[string]bool {
	out := map[string]bool{l: true}
	for k := range m {
		out[k] = true
	}
	return out
}

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = map[string]bool{"job": true, "instance": true}

var legendRe = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)

// checkExpr checks one expression against the registry: every metric exists, every label it
// matches or groups by is one of its metrics' labels, and the legend names labels the result
// has. It returns the dashboard variables the expression uses, and the problems found.
func checkExpr(fams map[string]family, expr, legend string) (vars, problems []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	q, err := parsePromQL(expr)
	if err != nil {
		bad("%q: %v", expr, err)
		return nil, problems
	}
	if len(q.metrics) == 0 {
		bad("%q names no metric", expr)
	}
	all := map[string]bool{}
	for k := range targetLabels {
		all[k] = true
	}
	resolved := true
	for _, name := range q.metrics {
		f, _, err := resolve(fams, name)
		if err != nil {
			bad("%q: %v", expr, err)
			resolved = false
			continue
		}
		for l := range f.labels {
			all[l] = true
		}
		for _, l := range q.matchers[name] {
			if !f.labels[l] && !targetLabels[l] {
				bad("%q: %s has no label %q (labels: %v)", expr, name, l, sortedKeys(f.labels))
			}
		}
	}
	if !resolved {
		return q.vars, problems // the label checks would only repeat the unknown metric
	}
	for _, word := range sortedKeys(q.clauses) {
		for _, l := range q.clauses[word] {
			if !all[l] {
				bad("%q: %s (%s): none of its metrics has label %q", expr, word, strings.Join(q.clauses[word], ", "), l)
			}
		}
	}
	// The labels of the result, roughly: an aggregation by (...) keeps those, one without (...)
	// drops those; otherwise the metrics keep theirs.
	result := all
	if by := q.clauses["by"]; len(by) > 0 {
		result = map[string]bool{}
		for _, l := range by {
			result[l] = true
		}
	} else if without := q.clauses["without"]; len(without) > 0 {
		result = map[string]bool{}
		for l := range all {
			result[l] = !slices.Contains(without, l)
		}
	}
	for _, m := range legendRe.FindAllStringSubmatch(legend, -1) {
		if !result[m[1]] {
			bad("legend %q: the result of %q has no label %q", legend, expr, m[1])
		}
	}
	return q.vars, problems
}

// checkExprT reports checkExpr's problems on t.
func checkExprT(t *testing.T, fams map[string]family, where, expr, legend string) []string {
	t.Helper()
	vars, problems := checkExpr(fams, expr, legend)
	for _, p := range problems {
		t.Errorf("%s: %s", where, p)
	}
	return vars
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// panelList flattens the dashboard's panels, rows' nested panels included.
func panelList(ps []any) []map[string]any {
	var out []map[string]any
	for _, p := range ps {
		m, ok := p.(map[string]any)
		if !ok {
			continue
		}
		out = append(out, m)
		if sub, ok := m["panels"].([]any); ok {
			out = append(out, panelList(sub)...)
		}
	}
	return out
}

// usesDatasourceVar reports whether a panel's or target's datasource is ${datasource}.
func usesDatasourceVar(ds any, name string) bool {
	switch d := ds.(type) {
	case string:
		return d == "${"+name+"}" || d == "$"+name
	case map[string]any:
		uid, _ := d["uid"].(string)
		return uid == "${"+name+"}" || uid == "$"+name
	}
	return false
}

func TestDashboardMetrics(t *testing.T) {
	fams := registryFamilies(t)
	file := filepath.Join(root, "configs", "grafana", "tideline.json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if uid, _ := dash["uid"].(string); uid == "" {
		t.Errorf("%s: no uid: the provisioned dashboard's address would change", file)
	}

	// Variables: a Prometheus datasource variable, and queries over the registry's metrics.
	defined := map[string]bool{}
	dsVar := ""
	templating, _ := dash["templating"].(map[string]any)
	vars, _ := templating["list"].([]any)
	for _, v := range vars {
		m, _ := v.(map[string]any)
		name, _ := m["name"].(string)
		defined[name] = true
		if m["type"] == "datasource" && m["query"] == "prometheus" {
			dsVar = name
		}
	}
	if dsVar == "" {
		t.Fatalf("%s: no templating variable of type datasource with query prometheus", file)
	}
	var used []string
	queryVars := 0
	for _, v := range vars {
		m, _ := v.(map[string]any)
		if m["type"] != "query" {
			continue
		}
		queryVars++
		name, _ := m["name"].(string)
		where := "variable " + name
		if !usesDatasourceVar(m["datasource"], dsVar) {
			t.Errorf("%s: datasource %v, want ${%s}", where, m["datasource"], dsVar)
		}
		query, _ := m["query"].(string)
		if obj, ok := m["query"].(map[string]any); ok {
			query, _ = obj["query"].(string)
		}
		if def, _ := m["definition"].(string); def != "" && def != query {
			t.Errorf("%s: definition %q differs from query %q", where, def, query)
		}
		lv := labelValuesRe.FindStringSubmatch(query)
		if lv == nil {
			t.Errorf("%s: query %q: want label_values(metric, label)", where, query)
			continue
		}
		used = append(used, checkExprT(t, fams, where, lv[1], "")...)
		q, err := parsePromQL(lv[1])
		if err != nil || len(q.metrics) != 1 {
			continue
		}
		if f, _, err := resolve(fams, q.metrics[0]); err == nil && !f.labels[lv[2]] {
			t.Errorf("%s: %s has no label %q", where, q.metrics[0], lv[2])
		}
	}

	// Panels: every one queries ${datasource}, and every expression checks out.
	ids := map[float64]bool{}
	exprs := 0
	for _, p := range panelList(asList(dash["panels"])) {
		title, _ := p["title"].(string)
		where := fmt.Sprintf("panel %q", title)
		if id, ok := p["id"].(float64); !ok || ids[id] {
			t.Errorf("%s: id %v missing or not unique", where, p["id"])
		} else {
			ids[id] = true
		}
		if p["type"] == "row" {
			continue // a row holds panels, no query
		}
		if !usesDatasourceVar(p["datasource"], dsVar) {
			t.Errorf("%s: datasource %v, want ${%s}", where, p["datasource"], dsVar)
		}
		targets := asList(p["targets"])
		if len(targets) == 0 {
			t.Errorf("%s: no targets", where)
		}
		for _, tg := range targets {
			m, _ := tg.(map[string]any)
			ref, _ := m["refId"].(string)
			if !usesDatasourceVar(m["datasource"], dsVar) {
				t.Errorf("%s target %s: datasource %v, want ${%s}", where, ref, m["datasource"], dsVar)
			}
			expr, _ := m["expr"].(string)
			legend, _ := m["legendFormat"].(string)
			used = append(used, checkExprT(t, fams, where+" target "+ref, expr, legend)...)
			exprs++
		}
	}
	if exprs == 0 {
		t.Errorf("%s: no expressions", file)
	}
	var names []string
	for n := range fams {
		if strings.HasPrefix(n, "tideline_") {
			names = append(names, n)
		}
	}
	t.Logf("%s: %d panel expressions and %d variables checked against the %d tideline_ metrics of observe.NewMetrics", file, exprs, queryVars, len(names))
	for _, v := range used {
		if !defined[v] && !strings.HasPrefix(v, "__") {
			t.Errorf("%s: $%s is used but not defined under templating", file, v)
		}
	}
}

// TestParsePromQL keeps the scanner honest on the shapes the dashboard uses.
func TestParsePromQL(t *testing.T) {
	q, err := parsePromQL(`histogram_quantile(0.99, sum by (pipeline, le) (rate(tideline_commit_to_ack_seconds_bucket{pipeline=~"$pipeline", x!="a,b}"}[$__rate_interval]))) / on(pipeline) group_left tideline_x offset 5m`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tideline_commit_to_ack_seconds_bucket", "tideline_x"}; !slices.Equal(q.metrics, want) {
		t.Errorf("metrics %q, want %q", q.metrics, want)
	}
	if got := q.matchers["tideline_commit_to_ack_seconds_bucket"]; !slices.Equal(got, []string{"pipeline", "x"}) {
		t.Errorf("matchers %q", got)
	}
	if want := map[string][]string{"by": {"pipeline", "le"}, "on": {"pipeline"}}; !reflect.DeepEqual(q.clauses, want) {
		t.Errorf("clauses %q, want %q", q.clauses, want)
	}
	if want := []string{"pipeline", "__rate_interval"}; !slices.Equal(q.vars, want) {
		t.Errorf("vars %q, want %q", q.vars, want)
	}

	fams := map[string]family{
		"tideline_a_total": {typ: dto.MetricType_COUNTER, labels: map[string]bool{"pipeline": true}},
		"tideline_h":       {typ: dto.MetricType_HISTOGRAM, labels: map[string]bool{"sink": true}},
	}
	for _, tc := range []struct {
		expr, legend string
		ok           bool
	}{
		{`sum by (pipeline) (rate(tideline_a_total{pipeline=~"$p"}[1m]))`, "{{pipeline}}", true},
		{`histogram_quantile(0.5, sum by (sink, le) (rate(tideline_h_bucket[1m])))`, "{{sink}}", true},
		{`rate(tideline_h_sum[1m]) / rate(tideline_h_count[1m])`, "{{sink}}", true},
		{`rate(tideline_b_total[1m])`, "", false},                  // no such metric
		{`rate(tideline_h[1m])`, "", false},                        // a histogram's bare name
		{`rate(tideline_a_total_bucket[1m])`, "", false},           // not a histogram
		{`rate(tideline_a_total{sink="x"}[1m])`, "", false},        // no such label
		{`sum by (table) (rate(tideline_a_total[1m]))`, "", false}, // no such label
		{`sum without (pipeline) (rate(tideline_a_total[1m]))`, "{{pipeline}}", false},
		{`sum without (pipeline) (rate(tideline_a_total[1m]))`, "{{job}}", true},
		{`sum by (pipeline) (rate(tideline_a_total[1m]))`, "{{op}}", false}, // aggregated away
	} {
		_, problems := checkExpr(fams, tc.expr, tc.legend)
		if (len(problems) == 0) != tc.ok {
			t.Errorf("%q legend %q: problems %q, want ok=%v", tc.expr, tc.legend, problems, tc.ok)
		}
	}
}

// --- helpers ------------------------------------------------------------------------------

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func decodeYAMLFile(file string, v any) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}
