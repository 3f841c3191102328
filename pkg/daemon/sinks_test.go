package daemon_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // the DuckDB target's reader
	_ "github.com/go-sql-driver/mysql" // the MariaDB target's reader
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql for the PostgreSQL reads
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
	icebergsink "github.com/tideline-cdc/tideline/sinks/iceberg"
)

// accountsWriter runs a mixed insert/update/delete workload on
// public.accounts until stopped; once altered is set it also writes the
// tier column added by the test's ALTER TABLE.
type accountsWriter struct {
	altered atomic.Bool
	count   atomic.Int64
	stop    context.CancelFunc
	done    chan struct{}
}

func startAccountsWriter(t *testing.T, dsn string) *accountsWriter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &accountsWriter{stop: cancel, done: make(chan struct{})}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		bg := context.Background() // a cancel must not cut a commit in half
		for ctx.Err() == nil {
			id := rand.IntN(400) + 1
			tier := "NULL"
			if w.altered.Load() {
				tier = fmt.Sprint(rand.IntN(5))
			}
			var q string
			switch n := rand.IntN(10); {
			case n < 4:
				q = fmt.Sprintf(`INSERT INTO public.accounts (id, name, balance, opened, active, note%[3]s)
					VALUES (%[1]d, 'n%[1]d', %[2]d.25, DATE '2026-01-01' + %[1]d, true, repeat('x', %[1]d)%[4]s)
					ON CONFLICT (id) DO NOTHING`, id, rand.IntN(1000), map[bool]string{true: ", tier"}[w.altered.Load()],
					map[bool]string{true: ", " + tier}[w.altered.Load()])
			case n < 8:
				set := ""
				if w.altered.Load() {
					set = ", tier = " + tier
				}
				q = fmt.Sprintf(`UPDATE public.accounts SET balance = balance + 1.5, active = NOT active, name = 'u%d'%s WHERE id = %d`, rand.IntN(100), set, id)
			default:
				q = fmt.Sprintf(`DELETE FROM public.accounts WHERE id = %d`, id)
			}
			if _, err := conn.Exec(bg, q); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			w.count.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

// snapshotRows reads a table as sorted lines "id|col=val|…" over cols,
// normalising booleans and NULLs so that every target prints alike.
func snapshotRows(t *testing.T, db *sql.DB, q string, cols []string) []string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		// A target not caught up yet may lack the table or a column.
		return []string{"query failed: " + err.Error()}
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(cols))
		for i, v := range vals {
			s := "NULL"
			if v.Valid {
				s = v.String
				switch s {
				case "t", "1", "true":
					if cols[i] == "active" {
						s = "true"
					}
				case "f", "0", "false":
					if cols[i] == "active" {
						s = "false"
					}
				}
				if cols[i] == "opened" && len(s) > 10 {
					s = s[:10] // a DATE read through a driver as a timestamp
				}
			}
			parts[i] = cols[i] + "=" + s
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func diffRows(a, b []string) string {
	in := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var d []string
	for _, x := range a {
		if !mb[x] {
			d = append(d, "- "+x)
		}
	}
	for _, x := range b {
		if !ma[x] {
			d = append(d, "+ "+x)
		}
	}
	if len(d) > 10 {
		d = append(d[:10], fmt.Sprintf("… %d more", len(d)-10))
	}
	return strings.Join(d, "\n")
}

// TestSinksKillNineLoop streams a mixed insert/update/delete workload from
// PostgreSQL into three warehouses at once (PostgreSQL, MariaDB, DuckDB),
// killing tideline with SIGKILL at random moments and adding a column in
// the middle. Afterwards every target table equals the source table, row
// for row.
func TestSinksKillNineLoop(t *testing.T) {
	e := newEnv(t)
	maria := testenv.NewMariaDB(t, testenv.MariaDBOptions{})
	mysqlDB, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", maria.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer mysqlDB.Close()
	if _, err := mysqlDB.Exec("CREATE DATABASE mart"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.pg.CreateDB(ctx, "warehouse"); err != nil {
		t.Fatal(err)
	}
	e.exec(`CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2) NOT NULL,
		opened date, active boolean NOT NULL, note text)`)
	e.exec(`INSERT INTO public.accounts SELECT g, 'n' || g, g, DATE '2026-01-01' + g, g % 2 = 0, repeat('y', g) FROM generate_series(1, 200) g`)
	duckPath := filepath.Join(t.TempDir(), "wh.duckdb")
	port, _ := freePort(t)
	cfg := e.writeConfig([]string{"public.accounts"}, httpConfig(port)+fmt.Sprintf(`sinks:
  - name: pg
    type: postgres
    dsn: %s
    batch_records: 500
    linger: 50ms
  - name: maria
    type: mysql
    dsn: mysql://root@127.0.0.1:%d/mart
    batch_records: 500
    linger: 50ms
  - name: duck
    type: duckdb
    path: %s
    keep_open: false
    batch_records: 500
    linger: 50ms
`, e.pg.DSN("warehouse"), maria.Port(), duckPath))

	w := startAccountsWriter(t, e.pg.DSN("postgres"))
	for i := 0; i < 6; i++ {
		p := startProc(t, cfg, port)
		if i > 0 {
			p.waitReady(60 * time.Second)
		}
		if i == 3 {
			e.exec("ALTER TABLE public.accounts ADD COLUMN tier int")
			w.altered.Store(true)
		}
		time.Sleep(time.Duration(500+rand.IntN(2500)) * time.Millisecond)
		p.kill9()
	}
	p := startProc(t, cfg, port)
	p.waitReady(60 * time.Second)
	time.Sleep(500 * time.Millisecond)
	w.stop()
	<-w.done
	t.Logf("writer committed %d statements across 6 kills", w.count.Load())

	cols := []string{"id", "name", "balance", "opened", "active", "note", "tier"}
	sel := "SELECT id, name, balance, opened, active, note, tier FROM "
	srcDB, err := sql.Open("pgx", e.pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer srcDB.Close()
	source := snapshotRows(t, srcDB, sel+"public.accounts", cols)
	pgDB, err := sql.Open("pgx", e.pg.DSN("warehouse"))
	if err != nil {
		t.Fatal(err)
	}
	defer pgDB.Close()
	targets := map[string]func() []string{
		"postgres": func() []string { return snapshotRows(t, pgDB, sel+"public.accounts", cols) },
		"mariadb":  func() []string { return snapshotRows(t, mysqlDB, sel+"mart.accounts", cols) },
		"duckdb": func() []string {
			// keep_open: false, so the file is free between batches.
			for i := 0; ; i++ {
				db, err := sql.Open("duckdb", duckPath+"?access_mode=read_only")
				if err == nil {
					if err = db.Ping(); err == nil {
						defer db.Close()
						// The driver scans DECIMAL and DATE as Go values: read text.
						return snapshotRows(t, db, "SELECT id, name, balance::VARCHAR, opened::VARCHAR, active, note, tier FROM public.accounts", cols)
					}
					db.Close()
				}
				if i > 100 {
					t.Fatalf("open %s: %v", duckPath, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		},
	}
	for name, read := range targets {
		deadline := time.Now().Add(90 * time.Second)
		for {
			got := read()
			if d := diffRows(source, got); d == "" {
				t.Logf("%s: %d rows equal to the source", name, len(got))
				break
			} else if time.Now().After(deadline) {
				t.Errorf("%s differs from the source (- source only, + target only):\n%s", name, d)
				l := p.log()
				t.Logf("tideline's log (end):\n%s", l[max(0, len(l)-6000):])
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	for _, sink := range []string{"pg", "maria", "duck"} {
		if n, err := p.metric("tideline_sink_dlq_records_total", `sink="`+sink+`"`); err == nil && n > 0 {
			t.Errorf("sink %s sent %v records to its dead-letter topic", sink, n)
		}
	}
	p.term(60 * time.Second)
}

// TestRolesAndScaleOut runs the capture in one daemon (--role capture) and
// the same sink in two others (--role sinks): the two share the consumer
// group tideline-test-wh, split the partitions between them, and together
// apply every change to the target.
func TestRolesAndScaleOut(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.pg.CreateDB(ctx, "warehouse"); err != nil {
		t.Fatal(err)
	}
	e.exec("CREATE TABLE public.items (id bigint PRIMARY KEY, v int NOT NULL)")
	e.exec("INSERT INTO public.items SELECT g, 0 FROM generate_series(1, 500) g")
	cfg := e.config([]string{"public.items"}, func(c *config.Config) {
		c.Kafka.Topics.Partitions = 4
		c.Sinks = []config.Sink{{Name: "wh", Type: "postgres", DSN: config.Secret(e.pg.DSN("warehouse")), Linger: 20 * time.Millisecond}}
	})
	if cfg.Sinks[0].Group != "tideline-test-wh" {
		t.Errorf("group %q, want tideline-test-wh", cfg.Sinks[0].Group)
	}
	capture := e.start(cfg, daemon.Options{Role: daemon.RoleCapture})
	a := e.start(cfg, daemon.Options{Role: daemon.RoleSinks, Instance: "a"})
	b := e.start(cfg, daemon.Options{Role: daemon.RoleSinks, Instance: "b"})
	adm := kadm.NewClient(kgoClient(t, e.brokers))
	waitFor(t, 60*time.Second, "two members sharing the partitions", func() (bool, error) {
		gs, err := adm.DescribeGroups(ctx, "tideline-test-wh")
		if err != nil {
			return false, err
		}
		g := gs["tideline-test-wh"]
		if len(g.Members) != 2 {
			return false, nil
		}
		for _, m := range g.Members {
			if ca, ok := m.Assigned.AsConsumer(); !ok || len(ca.Topics) == 0 || len(ca.Topics[0].Partitions) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	e.exec("UPDATE public.items SET v = id * 2")
	e.exec("DELETE FROM public.items WHERE id % 10 = 0")
	wh, err := sql.Open("pgx", e.pg.DSN("warehouse"))
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	waitFor(t, 60*time.Second, "the target to equal the source", func() (bool, error) {
		var n, bad int
		err := wh.QueryRow("SELECT count(*), count(*) FILTER (WHERE v <> id * 2 OR id % 10 = 0) FROM public.items").Scan(&n, &bad)
		if err != nil {
			return false, nil // not created yet
		}
		return n == 450 && bad == 0, nil
	})
	// The capture process runs no sink, the sink processes no capture.
	if v, _ := metricValue(capture.metrics, "tideline_sink_batches_total"); v != 0 {
		t.Errorf("the capture role applied %v batches", v)
	}
	if v, _ := metricValue(a.metrics, "tideline_events_total"); v != 0 {
		t.Errorf("a sinks role captured %v events", v)
	}
	av, _ := metricValue(a.metrics, "tideline_sink_rows_total")
	bv, _ := metricValue(b.metrics, "tideline_sink_rows_total")
	if av == 0 || bv == 0 {
		t.Errorf("rows applied by the two members: %v and %v; both should have worked", av, bv)
	}
	t.Logf("rows applied: %v by one member, %v by the other", av, bv)

	// A sinks role cannot run the embedded broker.
	bad := *cfg
	bad.Kafka.Brokers = []string{config.Embedded}
	if err := daemon.Run(ctx, &bad, nopLogger(), daemon.Options{Role: daemon.RoleSinks}); err == nil || !strings.Contains(err.Error(), "embedded") {
		t.Errorf("role sinks with the embedded broker: %v", err)
	}
}

// metricValue sums a metric's samples in a registry.
func metricValue(m *observe.Metrics, name string) (float64, error) {
	fams, err := m.Registry.Gather()
	if err != nil {
		return 0, err
	}
	var v float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if s.Counter != nil {
				v += s.GetCounter().GetValue()
			} else if s.Gauge != nil {
				v += s.GetGauge().GetValue()
			}
		}
	}
	return v, nil
}

// TestSinkTargetOutage stops the sink's target database while changes
// flow: the sink retries (visible in its metrics and status) without
// sending anything to the dead-letter topic, and once the target is back
// every change is applied.
func TestSinkTargetOutage(t *testing.T) {
	e := newEnv(t)
	target := testenv.NewPostgres(t, testenv.PGOptions{})
	e.exec("CREATE TABLE public.items (id bigint PRIMARY KEY, v int NOT NULL)")
	cfg := e.config([]string{"public.items"}, func(c *config.Config) {
		c.Sinks = []config.Sink{{Name: "wh", Type: "postgres", DSN: config.Secret(target.DSN("postgres")), Linger: 20 * time.Millisecond}}
	})
	r := e.start(cfg, daemon.Options{})
	e.exec("INSERT INTO public.items SELECT g, 1 FROM generate_series(1, 100) g")
	tgt, err := sql.Open("pgx", target.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	count := func(q string) int {
		var n int
		if err := tgt.QueryRow(q).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	waitFor(t, 60*time.Second, "the first rows in the target", func() (bool, error) {
		return count("SELECT count(*) FROM public.items") == 100, nil
	})
	target.Kill() // the target dies; Restart below brings it back
	e.exec("INSERT INTO public.items SELECT g, 2 FROM generate_series(101, 300) g")
	e.exec("UPDATE public.items SET v = 3 WHERE id <= 50")
	waitFor(t, 60*time.Second, "the sink to retry and say so", func() (bool, error) {
		v, _ := metricValue(r.metrics, "tideline_sink_retries_total")
		return v >= 2, nil
	})
	// Long enough for the status to call it failed (retrying over 10 s).
	waitFor(t, 30*time.Second, "the status to show the sink failing", func() (bool, error) {
		resp, err := http.Get(r.httpURL + "/api/status")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var st observe.Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, err
		}
		return len(st.Sinks) == 1 && st.Sinks[0].State == observe.StateFailed && strings.Contains(st.Sinks[0].Reason, "retrying"), nil
	})
	if err := target.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "every change applied after the outage", func() (bool, error) {
		return count("SELECT count(*) FROM public.items") == 300 && count("SELECT count(*) FROM public.items WHERE v = 3") == 50, nil
	})
	if v, _ := metricValue(r.metrics, "tideline_sink_dlq_records_total"); v != 0 {
		t.Errorf("%v records went to the dead-letter topic during a transient outage", v)
	}
	r.stop(t)
}

// TestSinkRegistriesAgree: every sink type the config accepts has a
// constructor, and every constructor a config entry.
func TestSinkRegistriesAgree(t *testing.T) {
	for typ := range config.SinkTypes {
		if _, ok := daemon.SinkTypes[typ]; !ok {
			t.Errorf("config accepts sink type %q, which the daemon cannot build", typ)
		}
	}
	for typ := range daemon.SinkTypes {
		if _, ok := config.SinkTypes[typ]; !ok {
			t.Errorf("the daemon builds sink type %q, which the config rejects", typ)
		}
	}
}

// TestLakeKillNineLoop streams the mixed workload into a Parquet change log
// and an Iceberg table while killing tideline with SIGKILL, with a column
// added in the middle. A trigger at the source records every change in an
// audit table; afterwards DuckDB's read_parquet over the log must list
// exactly those changes, in the same order, each once (plus the
// snapshot's rows), and an Iceberg scan must equal the source table.
func TestLakeKillNineLoop(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2) NOT NULL,
		opened date, active boolean NOT NULL, note text)`)
	e.exec(`INSERT INTO public.accounts SELECT g, 'n' || g, g, DATE '2026-01-01' + g, g % 2 = 0, repeat('y', g) FROM generate_series(1, 200) g`)
	e.exec(`CREATE TABLE public.audit (seq bigserial PRIMARY KEY, op text NOT NULL, id bigint NOT NULL, doc jsonb)`)
	e.exec(`CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF TG_OP = 'DELETE' THEN
				INSERT INTO public.audit (op, id) VALUES ('d', OLD.id);
			ELSE
				INSERT INTO public.audit (op, id, doc) VALUES (CASE TG_OP WHEN 'INSERT' THEN 'c' ELSE 'u' END, NEW.id, to_jsonb(NEW));
			END IF;
			RETURN NULL;
		END $$`)
	e.exec(`CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.accounts FOR EACH ROW EXECUTE FUNCTION public.audit()`)
	lake, warehouse := t.TempDir(), t.TempDir()
	port, _ := freePort(t)
	cfg := e.writeConfig([]string{"public.accounts"}, httpConfig(port)+fmt.Sprintf(`sinks:
  - name: log
    type: parquet
    path: file://%s
    batch_records: 500
    linger: 200ms
  - name: ice
    type: iceberg
    warehouse: %s
    compact_every: 20
    batch_records: 2000
    linger: 500ms
`, lake, warehouse))

	p := startProc(t, cfg, port)
	p.waitReady(60 * time.Second) // the snapshot is taken: every change from here is in the audit
	w := startAccountsWriter(t, e.pg.DSN("postgres"))
	for i := 0; i < 6; i++ {
		if i == 3 {
			e.exec("ALTER TABLE public.accounts ADD COLUMN tier int")
			w.altered.Store(true)
		}
		time.Sleep(time.Duration(500+rand.IntN(2500)) * time.Millisecond)
		p.kill9()
		p = startProc(t, cfg, port)
		p.waitReady(60 * time.Second)
	}
	time.Sleep(500 * time.Millisecond)
	w.stop()
	<-w.done
	t.Logf("writer committed %d statements across 6 kills", w.count.Load())

	srcDB, err := sql.Open("pgx", e.pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer srcDB.Close()
	cols := []string{"op", "id", "name", "balance", "active", "tier"}
	source := func() []string {
		return orderedRows(t, srcDB, `SELECT op, id, doc->>'name', doc->>'balance', doc->>'active', doc->>'tier' FROM public.audit ORDER BY seq`, cols)
	}()
	duck, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer duck.Close()
	glob := "file://" + lake + "/public.accounts/*/*.parquet"
	var got []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		got = orderedRows(t, duck, `SELECT _tideline_op, id, name, balance::VARCHAR, active::VARCHAR, tier::VARCHAR
			FROM read_parquet('`+glob+`', union_by_name=true) WHERE _tideline_op <> 'r' ORDER BY _tideline_position`, cols)
		if len(got) >= len(source) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(source) < 100 {
		t.Fatalf("only %d changes at the source: the workload did not run", len(source))
	}
	if d := firstDifference(source, got); d != "" {
		t.Errorf("the change log differs from the source's audit (%d changes vs %d): %s", len(got), len(source), d)
		l := p.log()
		t.Logf("tideline's log (end):\n%s", l[max(0, len(l)-6000):])
	} else {
		t.Logf("the change log holds the %d changes of the audit, in order, each once", len(got))
	}
	snap := orderedRows(t, duck, `SELECT count(*), count(DISTINCT id) FROM read_parquet('`+glob+`', union_by_name=true) WHERE _tideline_op = 'r'`, []string{"n", "ids"})
	if len(snap) != 1 || snap[0] != "n=200|ids=200" {
		t.Errorf("snapshot rows in the log: %v, want 200 distinct", snap)
	}
	// The Iceberg table equals the source table.
	tableCols := []string{"id", "name", "balance", "opened", "active", "note", "tier"}
	want := snapshotRows(t, srcDB, "SELECT id, name, balance, opened, active, note, tier FROM public.accounts", tableCols)
	ice := icebergsink.Config{Name: "ice", Warehouse: warehouse}
	deadline = time.Now().Add(90 * time.Second)
	for {
		got, err := icebergRows(t, ice, tableCols)
		d := diffRows(want, got)
		if err == nil && d == "" {
			t.Logf("iceberg: %d rows equal to the source", len(got))
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the Iceberg table differs from the source (%v; - source only, + table only):\n%s", err, d)
			break
		}
		time.Sleep(time.Second)
	}
	for _, sink := range []string{"log", "ice"} {
		if n, err := p.metric("tideline_sink_dlq_records_total", `sink="`+sink+`"`); err == nil && n > 0 {
			t.Errorf("sink %s sent %v records to its dead-letter topic", sink, n)
		}
	}
	p.term(60 * time.Second)
}

// icebergRows scans public.accounts from an Iceberg warehouse as
// snapshotRows prints rows.
func icebergRows(t *testing.T, cfg icebergsink.Config, cols []string) ([]string, error) {
	t.Helper()
	rows, err := icebergsink.ScanRows(context.Background(), cfg, "public", "accounts")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range rows {
		parts := make([]string, len(cols))
		for i, c := range cols {
			s := "NULL"
			switch v := r[c].(type) {
			case nil:
			case time.Time:
				s = v.Format("2006-01-02")
			default:
				s = fmt.Sprint(v)
			}
			parts[i] = c + "=" + s
		}
		out = append(out, strings.Join(parts, "|"))
	}
	sort.Strings(out)
	return out, nil
}

// orderedRows is snapshotRows without the sort, deletes compared by op and
// key only (a delete's before image holds the key).
func orderedRows(t *testing.T, db *sql.DB, q string, cols []string) []string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, 0, len(cols))
		for i, v := range vals {
			if i > 1 && vals[0].String == "d" {
				break
			}
			s := "NULL"
			if v.Valid {
				s = v.String
			}
			parts = append(parts, cols[i]+"="+s)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func firstDifference(want, got []string) string {
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			return fmt.Sprintf("change %d: source %s, log %s", i, want[i], got[i])
		}
	}
	if len(want) != len(got) {
		return fmt.Sprintf("%d changes at the source, %d in the log", len(want), len(got))
	}
	return ""
}
