package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseMinimalAppliesDefaults(t *testing.T) {
	t.Setenv("TL_PW", "pa:ss")
	c, err := Parse([]byte(`
name: shop
source:
  type: postgres
  dsn: postgres://u:${TL_PW}@db:5432/app
  tables: [public.customers, "sales.*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Source.DSN) != "postgres://u:pa:ss@db:5432/app" {
		t.Errorf("env expansion: dsn = %q", c.Source.DSN)
	}
	if strings.Contains(c.Source.DSN.String(), "pa:ss") {
		t.Errorf("Secret.String shows the password: %s", c.Source.DSN)
	}
	checks := map[string][2]any{
		"slot":         {c.Source.Slot, "tideline_shop"},
		"publication":  {c.Source.Publication, "tideline_shop"},
		"snapshot":     {c.Source.Snapshot, "initial"},
		"topic_prefix": {c.Kafka.TopicPrefix, "shop"},
		"brokers":      {strings.Join(c.Kafka.Brokers, ","), Embedded},
		"listen":       {c.Kafka.Embedded.Listen, "127.0.0.1:9092"},
		"http":         {c.HTTP.Listen, "127.0.0.1:8080"},
		"budget":       {c.Capture.MaxInFlightBytes, ByteSize(64 << 20)},
		"status":       {c.Source.StatusInterval, 10 * time.Second},
		"tombstones":   {c.Kafka.TombstonesOn(), true},
	}
	for k, v := range checks {
		if v[0] != v[1] {
			t.Errorf("%s = %v, want %v", k, v[0], v[1])
		}
	}
}

func TestParseReportsEveryProblemWithItsPath(t *testing.T) {
	_, err := Parse([]byte(`
name: "bad name!"
source:
  type: oracle
  dsn: ${TL_SURELY_UNSET}
  tables: [nodot]
  snapshot: sometimes
  status_interval: soon
  colour: blue
kafka:
  brokers: [localhost]
  embeded: {listen: x}
  topics: {partitions: many}
capture:
  max_inflight_bytes: 12 parsecs
`))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("got %v, want Problems", err)
	}
	want := map[string]string{
		"name":                       "letters, digits",
		"source.type":                `"oracle" is not a known source type`,
		"source.dsn":                 "TL_SURELY_UNSET is not set",
		"source.tables[0]":           `"nodot" is not schema.table`,
		"source.snapshot":            "use initial or never",
		"source.status_interval":     "not a duration",
		"source.colour":              "unknown key",
		"kafka.brokers[0]":           "not host:port",
		"kafka.embeded":              `did you mean "embedded"`,
		"kafka.topics.partitions":    "not a valid",
		"capture.max_inflight_bytes": "not a size",
	}
	got := map[string]string{}
	for _, p := range ps {
		got[p.Path] += p.Msg + ";"
	}
	for path, frag := range want {
		if !strings.Contains(got[path], frag) {
			t.Errorf("%s: got %q, want a problem mentioning %q", path, got[path], frag)
		}
	}
	if len(ps) < len(want) {
		t.Errorf("%d problems, want at least %d:\n%v", len(ps), len(want), err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("error %v does not name the file", err)
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	path := filepath.Join("..", "..", "configs", "postgres.example.yaml")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the example config is missing: %v", err)
	}
	t.Setenv("PGPASSWORD", "secret")
	if _, err := Load(path); err != nil {
		t.Fatalf("configs/postgres.example.yaml: %v", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"64MiB": 64 << 20, "1GB": 1e9, "512k": 512 << 10, "100": 100, "2 MiB": 2 << 20} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "3 furlongs"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", in)
		}
	}
}

// TestExampleConfigDocumentsEveryKey checks that configs/postgres.example.yaml
// sets every key the Config struct reads, so the example stays the reference.
func TestExampleConfigDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "configs", "postgres.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(typ reflect.Type, node map[string]any, path string)
	walk = func(typ reflect.Type, node map[string]any, path string) {
		for i := 0; i < typ.NumField(); i++ {
			key := strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0]
			val, ok := node[key]
			if !ok {
				t.Errorf("the example does not show %s%s", path, key)
				continue
			}
			ft := typ.Field(i).Type
			if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)) {
				sub, _ := val.(map[string]any)
				walk(ft, sub, path+key+".")
			}
		}
	}
	walk(reflect.TypeOf(Config{}), doc, "")
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db":                       "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h/db?password=secret&sslmode=require":   "postgres://u@h/db?password=xxxxx&sslmode=require",
		"postgres://u@h/db?sslpassword=secret&sslkey=/k/path": "postgres://u@h/db?sslkey=xxxxx&sslpassword=xxxxx",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMySQLDSNParameters(t *testing.T) {
	parse := func(dsn string) error {
		_, err := Parse([]byte("name: m\nsource:\n  type: mysql\n  dsn: " + dsn + "\n  tables: [app.t]\n"))
		return err
	}
	dir := t.TempDir()
	ca, cert, key, otherKey := writeTLSFiles(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "mysql://u:p@db:3306/app"
	for _, ok := range []string{"", "?tls=true", "?tls=false", "?tls=skip-verify", "?tls=true&tls_ca=" + ca,
		"?tls=true&tls_ca=" + ca + "&tls_cert=" + cert + "&tls_key=" + key} {
		if err := parse(base + ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	// Each bad DSN: the message MySQLTLS gives (the source connects with
	// it), under source.dsn.
	for q, want := range map[string]string{
		"?tls=yes":                      `tls="yes": use true, skip-verify or false`,
		"?tls=true&tls_ca=/nonexistent": "tls_ca: open /nonexistent: no such file or directory",
		"?sslmode=require":              `unknown parameter "sslmode" (known: tls, tls_ca, tls_cert, tls_key)`,
		"?tls_ca=" + ca:                 "tls_ca needs tls=true (or skip-verify)",
		"?tls=false&tls_cert=" + cert:   "tls_cert needs tls=true (or skip-verify)",
		"?tls_key=" + key:               "tls_key needs tls=true (or skip-verify)",
		"?tls=true&tls_ca=" + notPEM:    "tls_ca " + notPEM + ": no PEM certificate in it",
		"?tls=true&tls_cert=" + cert:    "tls_cert and tls_key go together",
		"?tls=true&tls_key=" + key:      "tls_cert and tls_key go together",
		"?tls=true&tls_cert=" + cert + "&tls_key=" + otherKey: "tls_cert/tls_key: tls: private key does not match public key",
	} {
		err := parse(base + q)
		if err == nil || !strings.Contains(err.Error(), "source.dsn: "+want) {
			t.Errorf("%s: got %v, want source.dsn: %s", q, err, want)
		}
	}
}

// writeTLSFiles writes a self-signed certificate, its key and another
// key as PEM files in dir.
func writeTLSFiles(t *testing.T, dir string) (ca, cert, key, otherKey string) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k := newKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPEM := func(name string, k *ecdsa.PrivateKey) string {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "PRIVATE KEY", b)
	}
	cert = write("cert.pem", "CERTIFICATE", der)
	return cert, cert, keyPEM("key.pem", k), keyPEM("other-key.pem", newKey())
}

func TestSecretNeverPrints(t *testing.T) {
	tok := Secret("0123456789abcdef-token")
	dsn := Secret("postgres://u:pw-xyz@h/db")
	for _, s := range []string{tok.String(), fmt.Sprintf("%v %s %#v", tok, tok, tok), dsn.String(), fmt.Sprintf("%+v", struct{ D Secret }{dsn})} {
		if strings.Contains(s, "token") || strings.Contains(s, "pw-xyz") {
			t.Errorf("secret printed: %s", s)
		}
	}
	b, _ := json.Marshal(map[string]Secret{"t": tok})
	if strings.Contains(string(b), "token") {
		t.Errorf("secret marshalled: %s", b)
	}
}

// TestSinkBatchDefaults checks each kind of sink's batch defaults and that
// a value the config gives is kept.
func TestSinkBatchDefaults(t *testing.T) {
	base := "name: app\nsource:\n  type: postgres\n  dsn: postgres://u@h/db\n  tables: [public.t]\nsinks:\n"
	c, err := Parse([]byte(base + "  - name: pg\n    type: postgres\n    dsn: postgres://u@h/w\n" +
		"  - name: dw\n    type: duckdb\n    path: w.duckdb\n" +
		"  - name: dw2\n    type: duckdb\n    path: w2.duckdb\n    batch_records: 500\n    batch_bytes: 1MiB\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		records int
		bytes   ByteSize
	}{{10000, 16 << 20}, {25_000, 16 << 20}, {500, 1 << 20}} {
		if s := c.Sinks[i]; s.BatchRecords != want.records || s.BatchBytes != want.bytes || s.Linger != 200*time.Millisecond {
			t.Errorf("sink %s: batch_records %d, batch_bytes %d, linger %s; want %d, %d, 200ms", s.Name, s.BatchRecords, s.BatchBytes, s.Linger, want.records, want.bytes)
		}
	}
}

func TestLakeSinkKeys(t *testing.T) {
	base := "name: app\nsource:\n  type: postgres\n  dsn: postgres://u@h/db\n  tables: [public.t]\nsinks:\n"
	c, err := Parse([]byte(base + "  - name: log\n    type: parquet\n    path: s3://lake/x\n    s3: {endpoint: http://127.0.0.1:9000, path_style: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Sinks[0]; s.Linger != 10*time.Second || s.BatchBytes != 64<<20 || s.BatchRecords != 250_000 || s.S3 == nil || !s.S3.PathStyle {
		t.Errorf("parquet defaults: %+v", s)
	}
	for yaml, want := range map[string]string{
		"  - name: a\n    type: parquet\n":                                                                "sinks[0].path: is required",
		"  - name: a\n    type: parquet\n    path: /tmp/x\n":                                              "want file:///absolute/dir or s3://bucket/prefix",
		"  - name: a\n    type: parquet\n    path: file:///x\n    s3: {region: eu}\n":                     "sinks[0].s3: is only used with an s3:// path",
		"  - name: a\n    type: parquet\n    path: s3://b\n    s3: {endpoint: localhost}\n":               "sinks[0].s3.endpoint",
		"  - name: a\n    type: parquet\n    path: s3://b\n    s3: {access_key_id: k}\n":                  "go together",
		"  - name: a\n    type: iceberg\n    warehouse: s3://b/w\n":                                       "sinks[0].catalog: is required with an s3:// warehouse",
		"  - name: a\n    type: iceberg\n    catalog: mysql://x/y\n    warehouse: /w\n":                   "a SQLite file path, or a postgres:// URL",
		"  - name: a\n    type: iceberg\n    catalog: c.db\n    dsn: postgres://x/y\n    warehouse: /w\n": "sinks[0].dsn: is not used by a sink of type iceberg",
		"  - name: a\n    type: duckdb\n    path: x.duckdb\n    warehouse: /w\n":                          "sinks[0].warehouse: is not used by a sink of type duckdb",
	} {
		_, err := Parse([]byte(base + yaml))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", yaml, err, want)
		}
	}
}
