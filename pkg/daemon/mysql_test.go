package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/kafka"
)

// menv is one test's MariaDB and Kafka.
type menv struct {
	t       *testing.T
	db      *testenv.MariaDB
	brokers []string
}

func newMEnv(t *testing.T, o testenv.MariaDBOptions) *menv {
	t.Helper()
	db := testenv.NewMariaDB(t, o)
	k := testenv.NewKafka(t)
	m := &menv{t: t, db: db, brokers: k.ListenAddrs()}
	m.exec("CREATE DATABASE app")
	return m
}

func (m *menv) exec(sqls ...string) {
	m.t.Helper()
	conn, err := client.Connect(fmt.Sprintf("127.0.0.1:%d", m.db.Port()), "root", "", "")
	if err != nil {
		m.t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Execute("SET NAMES utf8mb4"); err != nil {
		m.t.Fatal(err)
	}
	for _, q := range sqls {
		if _, err := conn.Execute(q); err != nil {
			m.t.Fatalf("%s: %v", q, err)
		}
	}
}

// seedKV fills app.kv with ids 1..n at v = 1.
func (m *menv) seedKV(n int) {
	m.t.Helper()
	values := make([]string, n)
	for i := range values {
		values[i] = fmt.Sprintf("(%d, 1)", i+1)
	}
	m.exec("INSERT INTO app.kv VALUES " + strings.Join(values, ","))
}

func (m *menv) config(tables []string, mutate func(*config.Config)) *config.Config {
	m.t.Helper()
	c := &config.Config{
		Name: "test",
		Source: config.Source{Type: "mysql", DSN: config.Secret(fmt.Sprintf("mysql://root@127.0.0.1:%d/app", m.db.Port())),
			Tables: tables, StatusInterval: 200 * time.Millisecond},
		Kafka: config.Kafka{Brokers: m.brokers},
		HTTP:  config.HTTP{Listen: "127.0.0.1:0"},
	}
	if mutate != nil {
		mutate(c)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		m.t.Fatal(err)
	}
	return c
}

func (m *menv) env() *env { return &env{t: m.t, brokers: m.brokers} }

// storedPosition returns the offsets store of cfg's pipeline and the
// binlog position stored in it (after a first run): a test saves it back
// to start again from there.
func (m *menv) storedPosition(cfg *config.Config) (*kafka.Store, []byte) {
	m.t.Helper()
	cl := kgoClient(m.t, m.brokers)
	store := kafka.NewStore(cl, kafka.NewTopics(cl, cfg.Kafka.Topics, nil), "test.offsets")
	old, err := store.Load(context.Background(), "mysql/test/position")
	if err != nil || old == nil {
		m.t.Fatalf("no stored position after the first run: %v", err)
	}
	return store, old
}

const mysqlTypesDDL = `CREATE TABLE app.items (
	id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, iu INT UNSIGNED, bu BIGINT UNSIGNED,
	dec_ DECIMAL(30,10), f FLOAT, d DOUBLE, vc VARCHAR(50), tx TEXT, vb VARBINARY(10),
	dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR, j JSON,
	e ENUM('red','green'), s SET('x','y','z'), b BIT(8)
)`

const mysqlTypesRow = `INSERT INTO app.items VALUES (%d, -128, 255, 4294967295, 18446744073709551615,
	12345678901234567890.0123456789, 1.5, -3.25e100, 'héllo "q"', 'text', X'00FF10',
	'1970-01-02', '-01:02:03.5', '1970-01-01 00:00:01.000002', '2026-11-22 11:14:15.5', 2026, '{"a": [1, 2.5]}',
	'green', 'x,z', b'00000101')`

// want is the documented representation (docs/types.md) of mysqlTypesRow.
var mysqlWant = map[string]string{
	"ti": "-128", "tu": "255", "iu": "4294967295", "bu": "18446744073709551615",
	"dec_": `"12345678901234567890.0123456789"`, "f": "1.5", "d": "-3.25e+100",
	"vc": `"héllo \"q\""`, "tx": `"text"`, "vb": `"AP8Q"`,
	"dt": "1", "tm": "-3723500000", "dtm": "1000002", "ts": `"2026-11-22T11:14:15.500000Z"`, "y": "2026",
	"e": `"green"`, "s": `"x,z"`, "b": "5",
}

func TestMySQLSnapshotStreamTypes(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec(mysqlTypesDDL, fmt.Sprintf(mysqlTypesRow, 1), "INSERT INTO app.items (id) VALUES (2)")
	e := m.env()
	r := e.start(m.config([]string{"app.items"}, nil), daemon.Options{})
	m.exec(fmt.Sprintf(mysqlTypesRow, 3), "INSERT INTO app.items (id) VALUES (4)",
		"UPDATE app.items SET vc = 'changed' WHERE id = 3", "DELETE FROM app.items WHERE id = 4")
	c := e.consume("test.app.items")
	ms := c.poll(7, 30*time.Second, nil) // r r c c u d tombstone
	var ops []string
	for _, msg := range ms {
		if msg.Value == nil {
			ops = append(ops, fmt.Sprintf("tombstone(%v)", msg.Key["id"]))
			continue
		}
		ops = append(ops, fmt.Sprintf("%s(%v)", msg.Value.Op, msg.Key["id"]))
		id := fmt.Sprint(msg.Key["id"])
		if (id == "1" || id == "3") && msg.Value.Op != "u" && msg.Value.After != nil {
			raw := string(msg.Raw)
			for col, want := range mysqlWant {
				frag := fmt.Sprintf(`"%s":%s`, col, want)
				if !strings.Contains(raw, frag) {
					t.Errorf("row %s (op %s): want %s in %s", id, msg.Value.Op, frag, raw)
				}
			}
			if !strings.Contains(raw, `"j":"{\"a\": [1, 2.5]}"`) && !strings.Contains(raw, `"j":"{\"a\":[1,2.5]}"`) {
				t.Errorf("row %s: json column not a JSON string: %s", id, raw)
			}
		}
		if msg.Value.Source.Connector != "mysql" {
			t.Errorf("source.connector = %q", msg.Value.Source.Connector)
		}
		if msg.Value.Op == "r" {
			if want := map[string]string{"1": "first", "2": "last"}[fmt.Sprint(msg.Key["id"])]; msg.Value.Source.Snapshot != want {
				t.Errorf("snapshot row %v: source.snapshot %q, want %q", msg.Key["id"], msg.Value.Source.Snapshot, want)
			}
		}
		raw := string(msg.Raw)
		if msg.Value.Op != "r" && (!strings.Contains(raw, `"server_id":1,"gtid":"0-1-`) || !strings.Contains(raw, `"file":"binlog.0`) ||
			!strings.Contains(raw, `"transaction":{"id":"0-1-`) || strings.Contains(raw, `"pos":0,`)) {
			t.Errorf("streamed event's source/transaction block incomplete: %s", raw)
		}
	}
	if got, want := strings.Join(ops, " "), "r(1) r(2) c(3) c(4) u(3) d(4) tombstone(4)"; got != want {
		t.Errorf("events %s, want %s", got, want)
	}
	r.stop(t)

	// A restart resumes from the stored position: no new snapshot, and
	// what was written while it was down arrives.
	m.exec("INSERT INTO app.items (id) VALUES (5)")
	r = e.start(m.config([]string{"app.items"}, nil), daemon.Options{})
	m.exec("ALTER TABLE app.items ADD COLUMN extra INT", "INSERT INTO app.items (id, extra) VALUES (6, 66)", "TRUNCATE TABLE app.items")
	ms = c.poll(10, 30*time.Second, nil)
	var tail []string
	for _, msg := range ms[7:] {
		tail = append(tail, fmt.Sprintf("%s(%v)", msg.Value.Op, msg.Key["id"]))
		if fmt.Sprint(msg.Key["id"]) == "6" && !strings.Contains(string(msg.Raw), `"extra":66`) {
			t.Errorf("row after ADD COLUMN lacks the new column: %s", msg.Raw)
		}
	}
	if got := strings.Join(tail, " "); got != "c(5) c(6) t(<nil>)" {
		t.Errorf("after restart: %s, want c(5) c(6) t(<nil>)", got)
	}
	r.stop(t)
}

func TestMySQLPreconditions(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{ExtraConf: map[string]string{"binlog_format": "STATEMENT", "binlog_row_image": "MINIMAL"}})
	m.exec("CREATE TABLE app.a (id INT PRIMARY KEY)")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := daemon.Run(ctx, m.config([]string{"app.a", "app.nope"}, nil), nopLogger(), daemon.Options{})
	if err == nil || !capture.IsFatal(err) {
		t.Fatalf("got %v, want a fatal precondition error", err)
	}
	for _, want := range []string{"binlog_format is STATEMENT", "binlog_row_image is MINIMAL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestMySQLReplayAcrossDDL restarts from a position before an ALTER TABLE:
// the rows written before it decode with the old columns (the schema
// history), the rows after it with the new ones.
func TestMySQLReplayAcrossDDL(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.h (id INT PRIMARY KEY, a VARCHAR(10))")
	e := m.env()
	cfg := m.config([]string{"app.h"}, nil)
	r := e.start(cfg, daemon.Options{})
	r.stop(t)
	store, old := m.storedPosition(cfg)
	ctx := context.Background()

	r = e.start(cfg, daemon.Options{})
	m.exec("INSERT INTO app.h VALUES (10, 'before')",
		"ALTER TABLE app.h ADD COLUMN b INT AFTER id",
		"INSERT INTO app.h VALUES (11, 7, 'after')")
	c := e.consume("test.app.h")
	c.poll(2, 30*time.Second, isEvent)
	r.stop(t)

	if err := store.Save(ctx, "mysql/test/position", old); err != nil {
		t.Fatal(err)
	}
	r = e.start(cfg, daemon.Options{})
	ms := c.poll(4, 30*time.Second, isEvent)
	for _, msg := range ms {
		after := fmt.Sprint(msg.Value.After)
		switch fmt.Sprint(msg.Key["id"]) {
		case "10":
			if after != "map[a:before id:10]" {
				t.Errorf("row 10 (written before the ALTER): %s", after)
			}
		case "11":
			if after != "map[a:after b:7 id:11]" {
				t.Errorf("row 11 (written after the ALTER): %s", after)
			}
		}
	}
	r.stop(t)
}

// TestMySQLRestartAfterSeveralDDLs writes rows between several DDLs while
// Tideline is down (column added, dropped, renamed, retyped; the table
// renamed; a new table created), then starts it from its stored position:
// every row decodes with the columns it was written with. A second start
// from the same old position (the stored schema history) decodes the same.
func TestMySQLRestartAfterSeveralDDLs(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.h (id INT PRIMARY KEY, a VARCHAR(10)) DEFAULT CHARSET=latin1")
	e := m.env()
	// Every history save prunes against the stored position: with a long
	// status interval the position stays at the old one until the second
	// run stops, so the history keeps what the second start from there
	// needs (a start from before the stored position is otherwise not
	// guaranteed its shapes).
	cfg := m.config([]string{"app.h*"}, func(c *config.Config) { c.Source.StatusInterval = 30 * time.Second })
	r := e.start(cfg, daemon.Options{})
	r.stop(t)
	store, old := m.storedPosition(cfg)
	ctx := context.Background()

	m.exec("INSERT INTO app.h VALUES (1, 'é1')",
		"ALTER TABLE app.h ADD COLUMN b INT",
		"INSERT INTO app.h VALUES (2, 'é2', 2)",
		"ALTER TABLE app.h DROP COLUMN a",
		"INSERT INTO app.h VALUES (3, 3)",
		"ALTER TABLE app.h RENAME COLUMN b TO c",
		"ALTER TABLE app.h MODIFY c VARCHAR(5) CHARACTER SET latin1",
		"INSERT INTO app.h VALUES (4, 'ü')",
		"RENAME TABLE app.h TO app.h2",
		"INSERT INTO app.h2 VALUES (5, 'y')",
		"CREATE TABLE app.hnew (id INT PRIMARY KEY, q TEXT, d DECIMAL(6,2))",
		"INSERT INTO app.hnew VALUES (6, 'z', 1.5)",
		"ALTER TABLE app.hnew ADD COLUMN r INT FIRST",
		"INSERT INTO app.hnew VALUES (70, 7, 'w', 2)",
	)
	want := map[string]string{
		"test.app.h/1":    `{"a":"é1","id":1}`,
		"test.app.h/2":    `{"a":"é2","b":2,"id":2}`,
		"test.app.h/3":    `{"b":3,"id":3}`,
		"test.app.h/4":    `{"c":"ü","id":4}`,
		"test.app.h2/5":   `{"c":"y","id":5}`,
		"test.app.hnew/6": `{"d":"1.50","id":6,"q":"z"}`,
		"test.app.hnew/7": `{"d":"2.00","id":7,"q":"w","r":70}`,
	}
	check := func(c *consumer) {
		t.Helper()
		ms := c.poll(len(want), 30*time.Second, isEvent)
		got := map[string]string{}
		for _, msg := range ms {
			after, _ := json.Marshal(msg.Value.After)
			got[fmt.Sprintf("%s/%v", msg.Topic, msg.Key["id"])] = string(after)
		}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s: after %s, want %s", k, got[k], w)
			}
		}
		if len(ms) != len(want) {
			t.Errorf("%d events, want %d", len(ms), len(want))
		}
	}
	r = e.start(cfg, daemon.Options{})
	check(e.consume("test.app.h", "test.app.h2", "test.app.hnew"))
	r.stop(t)

	if err := store.Save(ctx, "mysql/test/position", old); err != nil {
		t.Fatal(err)
	}
	// The replay re-sends the same events: read them from the offsets the
	// first pass ended at.
	ends, err := kadm.NewClient(kgoClient(t, m.brokers)).ListEndOffsets(ctx, "test.app.h", "test.app.h2", "test.app.hnew")
	if err != nil {
		t.Fatal(err)
	}
	r = e.start(cfg, daemon.Options{})
	offs := map[string]map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		offs[o.Topic] = map[int32]kgo.Offset{o.Partition: kgo.NewOffset().At(o.Offset)}
	})
	rc, err := kgo.NewClient(kgo.SeedBrokers(m.brokers...), kgo.ConsumePartitions(offs))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	check(&consumer{t: t, cl: rc})
	r.stop(t)
}

// mysqlWriter is the kv writer of the kill -9 test, for MariaDB: each
// transaction bumps v of one id (or inserts a new id with v = 1) and reads
// the committed value back.
func (m *menv) startWriter(firstNew, seeded int64) *writer {
	m.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{committed: map[int64]int64{}, stop: cancel, done: make(chan struct{})}
	for id := int64(1); id <= seeded; id++ {
		w.committed[id] = 1
	}
	conn, err := client.Connect(fmt.Sprintf("127.0.0.1:%d", m.db.Port()), "root", "", "app")
	if err != nil {
		m.t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close()
		next := firstNew
		for i := 0; ctx.Err() == nil; i++ {
			id := next
			insert := i%4 == 0
			if !insert {
				id = int64(i*7919)%(next-1) + 1
			}
			var err error
			if insert {
				_, err = conn.Execute("INSERT INTO kv (id, v) VALUES (?, 1)", id)
			} else {
				_, err = conn.Execute("UPDATE kv SET v = v + 1 WHERE id = ?", id)
			}
			if err != nil {
				m.t.Errorf("writer: %v", err)
				return
			}
			r, err := conn.Execute("SELECT v FROM kv WHERE id = ?", id)
			if err != nil {
				m.t.Errorf("writer: %v", err)
				return
			}
			v, _ := r.GetInt(0, 0)
			if insert {
				next++
			}
			w.mu.Lock()
			w.committed[id] = v
			w.mu.Unlock()
			w.count.Add(1)
		}
	}()
	return w
}

// TestMySQLKillNineLoopWithDDL kills tideline with SIGKILL at random
// moments while a writer commits on MariaDB, with an ALTER TABLE ADD
// COLUMN in the middle; every committed change must reach Kafka in per-key
// order, and rows decode with their own columns on both sides of the DDL.
func TestMySQLKillNineLoopWithDDL(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	const seeded = 1000
	m.exec("CREATE TABLE app.kv (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
	m.seedKV(seeded)
	port, _ := freePort(t)
	cfgPath := filepath.Join(t.TempDir(), "tideline.yaml")
	cfg := fmt.Sprintf("name: test\nsource:\n  type: mysql\n  dsn: mysql://root@127.0.0.1:%d/app\n  tables: [app.kv]\n  status_interval: 200ms\n"+
		"kafka:\n  brokers: [%s]\n%s", m.db.Port(), strings.Join(m.brokers, ", "), httpConfig(port))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	w := m.startWriter(seeded+1, seeded)
	for i := 0; i < 6; i++ {
		p := startProc(t, cfgPath, port)
		if i > 0 {
			p.waitReady(60 * time.Second)
		}
		if i == 3 {
			m.exec("ALTER TABLE app.kv ADD COLUMN note VARCHAR(20) DEFAULT 'new'")
		}
		time.Sleep(time.Duration(300+rand.IntN(2000)) * time.Millisecond)
		p.kill9()
	}
	p := startProc(t, cfgPath, port)
	p.waitReady(60 * time.Second)
	time.Sleep(time.Second)
	committed := w.halt()
	t.Logf("writer committed %d transactions across 6 kills", w.count.Load())
	e := m.env()
	c := e.consume("test.app.kv")
	ms := consumeUntil(t, c, committed, 90*time.Second)
	checkMySQLKV(t, ms, committed, true)
	p.term(60 * time.Second)
}

// checkMySQLKV checks per-key order: each key's values, with replays of an
// earlier window skipped (a value not above the last kept one), run 1, 2,
// 3, … without gaps up to the last committed value; and rows come in the
// two shapes, before the ALTER (id, v) and after it (id, v, note = 'new'),
// never another (when altered).
func checkMySQLKV(t *testing.T, ms []msg, committed map[int64]int64, altered bool) {
	t.Helper()
	last := map[int64]int64{}
	dups := 0
	shapes := map[string]int{}
	for _, msg := range ms {
		if msg.Value == nil || msg.Value.After == nil {
			continue
		}
		shape := fmt.Sprint(sortedKeys(msg.Value.After))
		if note, ok := msg.Value.After["note"]; ok && note != "new" {
			shape += fmt.Sprintf(" note=%v", note)
		}
		shapes[shape]++
		id, v := toInt(t, msg.Key["id"]), toInt(t, msg.Value.After["v"])
		prev, seen := last[id]
		switch {
		case !seen:
		case v <= prev:
			dups++
			continue
		case v != prev+1:
			t.Errorf("id %d: value %d after %d: a committed change is missing", id, v, prev)
		}
		last[id] = v
	}
	for id, want := range committed {
		if last[id] != want {
			t.Errorf("id %d: last value %d, want %d", id, last[id], want)
		}
	}
	if altered && (len(shapes) != 2 || shapes["[id v]"] == 0 || shapes["[id note v]"] == 0) {
		t.Errorf("row shapes %v: want [id v] before the ALTER and [id note v] (note=new) after it", shapes)
	}
	t.Logf("%d events, %d replayed duplicates skipped, shapes %v", len(ms), dups, shapes)
}

// TestMySQLPurgedPosition: changes written while Tideline was down were in
// a binlog that has since been purged: Tideline stops with an error that
// says so and how to recover, instead of skipping them.
func TestMySQLPurgedPosition(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.p (id INT PRIMARY KEY)")
	e := m.env()
	r := e.start(m.config([]string{"app.p"}, nil), daemon.Options{})
	r.stop(t)
	m.exec("FLUSH BINARY LOGS", "INSERT INTO app.p VALUES (1)", "FLUSH BINARY LOGS", "INSERT INTO app.p VALUES (2)", "FLUSH BINARY LOGS")
	m.exec("PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := daemon.Run(ctx, m.config([]string{"app.p"}, nil), nopLogger(), daemon.Options{})
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), "purged") || !strings.Contains(err.Error(), "mysql/test/position") {
		t.Fatalf("got %v, want a fatal error about the purged binlog naming the state key", err)
	}
}

// TestMySQLQuietTableAdvancesPosition: a captured table with no writes
// while another table churns: the stored position follows the binlog.
func TestMySQLQuietTableAdvancesPosition(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.quiet (id INT PRIMARY KEY)", "CREATE TABLE app.churn (id INT PRIMARY KEY AUTO_INCREMENT, pad VARCHAR(100))")
	e := m.env()
	cfg := m.config([]string{"app.quiet"}, nil)
	r := e.start(cfg, daemon.Options{})
	cl := kgoClient(t, m.brokers)
	store := kafka.NewStore(cl, kafka.NewTopics(cl, cfg.Kafka.Topics, nil), "test.offsets")
	ctx := context.Background()
	first, err := store.Load(ctx, "mysql/test/position")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		m.exec("INSERT INTO app.churn (pad) VALUES (REPEAT('x', 100))")
	}
	var after []byte
	waitFor(t, 30*time.Second, "the stored position to move past the churn", func() (bool, error) {
		after, err = store.Load(ctx, "mysql/test/position")
		return err == nil && strings.Contains(string(after), `"gtid":"0-1-`) && !strings.Contains(string(after), `0-1-2"`) && string(after) != string(first), err
	})
	t.Logf("position %s -> %s", first, after)
	r.stop(t)
}

// TestMySQLSnapshotHandoffUnderWrites takes the snapshot while a writer
// commits: every key's values continue from its snapshot row without gap
// or repeat.
func TestMySQLSnapshotHandoffUnderWrites(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	const seeded = 2000
	m.exec("CREATE TABLE app.kv (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
	m.seedKV(seeded)
	w := m.startWriter(seeded+1, seeded)
	waitFor(t, 10*time.Second, "writer", func() (bool, error) { return w.count.Load() > 50, nil })
	e := m.env()
	// Small batches: the snapshot is handed over in many of them.
	r := e.start(m.config([]string{"app.kv"}, func(c *config.Config) { c.Capture.BatchRecords = 100 }), daemon.Options{})
	time.Sleep(2 * time.Second)
	committed := w.halt()
	c := e.consume("test.app.kv")
	ms := consumeUntil(t, c, committed, 60*time.Second)
	last := map[int64]int64{}
	snap := 0
	marks := map[string]int{}
	for _, msg := range ms {
		id, v := toInt(t, msg.Key["id"]), toInt(t, msg.Value.After["v"])
		if msg.Value.Op == "r" {
			snap++
			marks[msg.Value.Source.Snapshot]++
			if _, seen := last[id]; seen {
				t.Errorf("id %d: snapshot row after stream events", id)
			}
		} else if prev, seen := last[id]; seen && v != prev+1 {
			t.Errorf("id %d: %d after %d: a gap or a duplicate at the handoff", id, v, prev)
		} else if !seen && v != 1 {
			t.Errorf("id %d: first event has v=%d but no snapshot row", id, v)
		}
		last[id] = v
	}
	if snap < seeded {
		t.Errorf("%d snapshot rows, want at least %d", snap, seeded)
	}
	if marks["first"] != 1 || marks["last"] != 1 || marks["true"] != snap-2 {
		t.Errorf("snapshot markers %v: want one first, one last, the rest true", marks)
	}
	r.stop(t)
}

// TestMySQLKafkaOutage stops the broker while a writer commits on MariaDB:
// the process stays up within its budget and every change arrives once
// the broker is back.
func TestMySQLKafkaOutage(t *testing.T) {
	startBroker := restartableBroker(t)
	k := startBroker()
	db := testenv.NewMariaDB(t, testenv.MariaDBOptions{})
	m := &menv{t: t, db: db, brokers: k.ListenAddrs()}
	m.exec("CREATE DATABASE app", "CREATE TABLE app.kv (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
	m.seedKV(200)
	const budget, batch = 1 << 20, 32 << 10
	e := m.env()
	r := e.start(m.config([]string{"app.kv"}, func(c *config.Config) {
		c.Capture.MaxInFlightBytes = budget
		c.Capture.BatchBytes = batch
	}), daemon.Options{})
	w := m.startWriter(201, 200)
	time.Sleep(time.Second)
	k.Close()
	peak := r.outage(t, w, 6*time.Second, budget, batch)
	// The binlog grew while nothing was delivered: the lag gauge counts
	// the bytes between the stored position and the server's end.
	lagGauge := r.metrics.SourceLagBytes.WithLabelValues("test")
	lagDuring := testutil.ToFloat64(lagGauge)
	if lagDuring < 10_000 {
		t.Errorf("tideline_source_lag_bytes = %.0f during the outage, want the binlog written meanwhile", lagDuring)
	}
	k = startBroker()
	t.Cleanup(k.Close)
	time.Sleep(time.Second)
	committed := w.halt()
	c := e.consume("test.app.kv")
	ms := consumeUntil(t, c, committed, 90*time.Second)
	checkMySQLKV(t, ms, committed, false)
	waitFor(t, 30*time.Second, "the lag to fall back once delivered", func() (bool, error) {
		return testutil.ToFloat64(lagGauge) < lagDuring/10, nil
	})
	t.Logf("outage: peak in-flight %.0f bytes; %d events", peak, len(ms))
	r.stop(t)
}

// TestMySQLCharsetsZeroDatesNulls: a latin1 column, a zero date (allowed
// by a lax sql_mode) and an all-NULL row, from the snapshot and the stream.
func TestMySQLCharsetsZeroDatesNulls(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec(`CREATE TABLE app.z (id INT PRIMARY KEY, l CHAR(5) CHARACTER SET latin1, mi MEDIUMINT, bl BLOB, d DATE, dt DATETIME)`)
	row := func(id int) string {
		return fmt.Sprintf("INSERT INTO app.z VALUES (%d, 'café', -8388608, X'CAFE', '0000-00-00', '0000-00-00 00:00:00')", id)
	}
	lax := "SET SESSION sql_mode = '', NAMES utf8mb4"
	conn, err := client.Connect(fmt.Sprintf("127.0.0.1:%d", m.db.Port()), "root", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{lax, row(1), "INSERT INTO app.z (id) VALUES (2)"} {
		if _, err := conn.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e := m.env()
	r := e.start(m.config([]string{"app.z"}, nil), daemon.Options{})
	for _, q := range []string{row(3), "INSERT INTO app.z (id) VALUES (4)"} {
		if _, err := conn.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c := e.consume("test.app.z")
	ms := c.poll(4, 30*time.Second, isEvent)
	for _, msg := range ms {
		got := fmt.Sprint(msg.Value.After)
		var want string
		switch fmt.Sprint(msg.Key["id"]) {
		case "1", "3":
			want = "map[bl:yv4= d:<nil> dt:<nil> id:%v l:café mi:-8388608]"
		default:
			want = "map[bl:<nil> d:<nil> dt:<nil> id:%v l:<nil> mi:<nil>]"
		}
		if want = fmt.Sprintf(want, msg.Key["id"]); got != want {
			t.Errorf("op %s: after = %s, want %s", msg.Value.Op, got, want)
		}
	}
	r.stop(t)
}

func TestMySQLPrivilegesAndTables(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.a (id INT PRIMARY KEY)",
		"CREATE USER 'weak'@'%' IDENTIFIED BY 's3cret-pw'", "GRANT SELECT ON app.* TO 'weak'@'%'")
	run := func(c *config.Config) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return daemon.Run(ctx, c, nopLogger(), daemon.Options{})
	}
	err := run(m.config([]string{"app.a"}, func(c *config.Config) {
		c.Source.DSN = config.Secret(fmt.Sprintf("mysql://weak:s3cret-pw@127.0.0.1:%d/app", m.db.Port()))
	}))
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), "REPLICATION SLAVE") || !strings.Contains(err.Error(), "REPLICATION CLIENT") {
		t.Errorf("user without replication privileges: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("error shows the password: %v", err)
	}
	err = run(m.config([]string{"app.nope"}, nil))
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), `"app.nope" matches no table`) {
		t.Errorf("missing table: %v", err)
	}
}

// TestMySQLServerIDInUse starts Tideline with the server_id of a replica
// that is already reading the binlog: it refuses, naming the setting. A
// registration of its own that outlived its connection (the old dump
// thread after a network partition) is no conflict.
func TestMySQLServerIDInUse(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.a (id INT PRIMARY KEY)")
	cfg := m.config([]string{"app.a"}, nil)
	// Another program, registered under its own host (go-mysql's default
	// is os.Hostname(); named here so the test does not depend on it).
	other := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: cfg.Source.ServerID, Flavor: "mariadb", Host: "127.0.0.1", Port: uint16(m.db.Port()), User: "root",
		Localhost: "another-replica", Logger: slog.New(slog.DiscardHandler),
	})
	defer other.Close()
	if _, err := other.StartSync(gmysql.Position{Name: "binlog.000001", Pos: 4}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := daemon.Run(ctx, cfg, nopLogger(), daemon.Options{})
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), fmt.Sprintf("source.server_id %d is in use by another replica", cfg.Source.ServerID)) {
		t.Fatalf("got %v, want a fatal error about source.server_id", err)
	}
	// Another id streams.
	other.Close()
	r := m.env().start(m.config([]string{"app.a"}, func(c *config.Config) { c.Source.ServerID = 4242 }), daemon.Options{})
	r.stop(t)

	// This pipeline's own stale dump ("tideline-" and its name), still
	// registered with the server_id: Tideline starts (the server ends the
	// stale dump when the new one registers) and streams. (First let the
	// other replica's registration go.)
	conn, err := client.Connect(fmt.Sprintf("127.0.0.1:%d", m.db.Port()), "root", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, 30*time.Second, "the other replica to leave SHOW SLAVE HOSTS", func() (bool, error) {
		r, err := conn.Execute("SHOW SLAVE HOSTS")
		if err != nil {
			return false, err
		}
		return len(r.Values) == 0, nil
	})
	stale := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: cfg.Source.ServerID, Flavor: "mariadb", Host: "127.0.0.1", Port: uint16(m.db.Port()), User: "root",
		Localhost: "tideline-test", DisableRetrySync: true, Logger: slog.New(slog.DiscardHandler),
	})
	defer stale.Close()
	if _, err := stale.StartSync(gmysql.Position{Name: "binlog.000001", Pos: 4}); err != nil {
		t.Fatal(err)
	}
	e := m.env()
	r = e.start(cfg, daemon.Options{})
	m.exec("INSERT INTO app.a VALUES (1)")
	e.consume("test.app.a").poll(1, 30*time.Second, isEvent)
	r.stop(t)
}

// TestMySQLUntrackedDDLReplay: an ALTER the parser rejects (MariaDB's
// WAIT n) changes a captured table: Tideline reads its shape from the
// server, and rows after it carry the new column. A restart from a
// position before that ALTER, after a later DDL changed the table again,
// decodes the rows between the two with the shape recorded the first time
// (id, a, c), not with today's (id, a, c, d).
func TestMySQLUntrackedDDLReplay(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.t (id INT PRIMARY KEY, a VARCHAR(10))")
	e := m.env()
	// The history is pruned against the stored position: with a long
	// status interval the position stays where the second run starts
	// until it stops, so the history keeps what a restart from there
	// needs.
	cfg := m.config([]string{"app.t"}, func(c *config.Config) { c.Source.StatusInterval = 30 * time.Second })
	r := e.start(cfg, daemon.Options{})
	r.stop(t)
	store, old := m.storedPosition(cfg)
	ctx := context.Background()

	want := map[string]string{
		"1": `{"a":"before","id":1}`,
		"2": `{"a":"between","c":2,"id":2}`,
		"3": `{"a":"after","c":3,"d":33,"id":3}`,
	}
	check := func(ms []msg) {
		t.Helper()
		got := map[string]string{}
		for _, msg := range ms {
			after, _ := json.Marshal(msg.Value.After)
			got[fmt.Sprint(msg.Key["id"])] = string(after)
		}
		for id, w := range want {
			if got[id] != w {
				t.Errorf("row %s: after %s, want %s", id, got[id], w)
			}
		}
		if len(ms) != len(want) {
			t.Errorf("%d events, want %d", len(ms), len(want))
		}
	}
	r = e.start(cfg, daemon.Options{})
	m.exec("INSERT INTO app.t VALUES (1, 'before')",
		"ALTER TABLE app.t WAIT 5 ADD COLUMN c INT",
		"INSERT INTO app.t VALUES (2, 'between', 2)")
	c := e.consume("test.app.t")
	// Tideline reads the shape from the server when it meets the ALTER:
	// let it, before the next DDL changes it again.
	c.poll(2, 30*time.Second, isEvent)
	m.exec("ALTER TABLE app.t ADD COLUMN d INT", "INSERT INTO app.t VALUES (3, 'after', 3, 33)")
	check(c.poll(3, 30*time.Second, isEvent))
	r.stop(t)

	if err := store.Save(ctx, "mysql/test/position", old); err != nil {
		t.Fatal(err)
	}
	ends, err := kadm.NewClient(kgoClient(t, m.brokers)).ListEndOffsets(ctx, "test.app.t")
	if err != nil {
		t.Fatal(err)
	}
	r = e.start(cfg, daemon.Options{})
	offs := map[string]map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		offs[o.Topic] = map[int32]kgo.Offset{o.Partition: kgo.NewOffset().At(o.Offset)}
	})
	rc, err := kgo.NewClient(kgo.SeedBrokers(m.brokers...), kgo.ConsumePartitions(offs))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	check((&consumer{t: t, cl: rc}).poll(3, 30*time.Second, isEvent))
	r.stop(t)
}

// TestMySQLGhostCutover: gh-ost's (and pt-osc's) cutover swaps a ghost
// table in under the captured name with one RENAME TABLE; only app.orders
// is captured, so the tracker cannot follow the second pair. The rows
// written to app.orders after it arrive with the new table's columns,
// also after a restart.
func TestMySQLGhostCutover(t *testing.T) {
	m := newMEnv(t, testenv.MariaDBOptions{})
	m.exec("CREATE TABLE app.orders (id INT PRIMARY KEY, a INT)", "INSERT INTO app.orders VALUES (1, 1)")
	e := m.env()
	cfg := m.config([]string{"app.orders"}, nil)
	r := e.start(cfg, daemon.Options{})
	m.exec("CREATE TABLE app._orders_gho (id INT PRIMARY KEY, a INT, b VARCHAR(10))",
		"INSERT INTO app.orders VALUES (2, 2)",
		"INSERT INTO app._orders_gho SELECT id, a, 'copied' FROM app.orders",
		"RENAME TABLE app.orders TO app._orders_del, app._orders_gho TO app.orders",
		"INSERT INTO app.orders VALUES (3, 3, 'new')",
		"UPDATE app.orders SET b = 'changed' WHERE id = 1")
	c := e.consume("test.app.orders")
	var got []string
	for _, msg := range c.poll(4, 30*time.Second, isEvent) {
		after, _ := json.Marshal(msg.Value.After)
		got = append(got, msg.Value.Op+string(after))
	}
	want := []string{`r{"a":1,"id":1}`, `c{"a":2,"id":2}`, `c{"a":3,"b":"new","id":3}`, `u{"a":1,"b":"changed","id":1}`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events\n  %s\nwant\n  %s", strings.Join(got, " "), strings.Join(want, " "))
	}
	r.stop(t)

	r = e.start(cfg, daemon.Options{})
	m.exec("INSERT INTO app.orders VALUES (4, 4, 'restarted')")
	ms := c.poll(5, 30*time.Second, isEvent)
	if after, _ := json.Marshal(ms[len(ms)-1].Value.After); string(after) != `{"a":4,"b":"restarted","id":4}` {
		t.Errorf("after a restart: %s", after)
	}
	r.stop(t)
}

// TestMySQLTLS captures through a user that must use TLS: without tls in
// the DSN the connection is refused, with tls=true and the CA it streams,
// and tls=true against an unknown CA fails on the certificate.
func TestMySQLTLS(t *testing.T) {
	// Not t.TempDir: its parent is private, and the server (the mysql
	// user) must read the files.
	dir, err := os.MkdirTemp("", "tideline-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, cert, key := writeTestCerts(t, dir)
	m := newMEnv(t, testenv.MariaDBOptions{ExtraConf: map[string]string{"ssl_ca": ca, "ssl_cert": cert, "ssl_key": key}})
	m.exec("CREATE TABLE app.a (id INT PRIMARY KEY)", "INSERT INTO app.a VALUES (1)",
		"CREATE USER 'tl'@'%' IDENTIFIED BY 'pw' REQUIRE SSL", "GRANT ALL PRIVILEGES ON *.* TO 'tl'@'%'")
	dsn := func(q string) func(*config.Config) {
		return func(c *config.Config) {
			c.Source.DSN = config.Secret(fmt.Sprintf("mysql://tl:pw@127.0.0.1:%d/app%s", m.db.Port(), q))
		}
	}
	run := func(c *config.Config) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return daemon.Run(ctx, c, nopLogger(), daemon.Options{})
	}
	if err := run(m.config([]string{"app.a"}, dsn(""))); err == nil || !strings.Contains(err.Error(), "Access denied") {
		t.Errorf("without TLS: got %v, want access denied", err)
	}
	if err := run(m.config([]string{"app.a"}, dsn("?tls=true"))); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("tls=true with an unknown CA: got %v, want a certificate error", err)
	}
	e := m.env()
	r := e.start(m.config([]string{"app.a"}, dsn("?tls=true&tls_ca="+ca)), daemon.Options{})
	m.exec("INSERT INTO app.a VALUES (2)")
	ms := e.consume("test.app.a").poll(2, 30*time.Second, isEvent)
	if ms[0].Value.Op != "r" || ms[1].Value.Op != "c" {
		t.Errorf("over TLS: ops %s %s, want r c", ms[0].Value.Op, ms[1].Value.Op)
	}
	r.stop(t)
}

// writeTestCerts writes a CA and a server certificate for 127.0.0.1 it
// signed, as PEM files in dir, readable by the server's user.
func writeTestCerts(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tideline test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(crand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	caCert, _ := x509.ParseCertificate(caDER)
	srvDER, err := x509.CreateCertificate(crand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "PRIVATE KEY", keyDER)
}
