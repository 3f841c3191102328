package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	sqlsink "github.com/tideline-cdc/tideline/sinks/sql"
)

// TestDemo runs the demo as make demo does, on free ports, and checks what its user is told to
// look at: both topics fill with snapshot rows and with inserts, updates and deletes, the
// metrics count them, /readyz answers ready, and stopping removes the server and the temp dirs.
func TestDemo(t *testing.T) {
	testDemo(t, "", "shop.public.customers", "shop.public.orders",
		`tideline_events_total{op="c",pipeline="shop",table="public.orders"}`)
}

// TestDemoMySQL is TestDemo for make demo SOURCE=mysql: MariaDB, whose topics are
// <name>.<database>.<table>. Its metrics label a table by its name alone (the PostgreSQL
// source's by schema.name).
func TestDemoMySQL(t *testing.T) {
	testDemo(t, "mysql", "shop.shop.customers", "shop.shop.orders",
		`tideline_events_total{op="c",pipeline="shop",table="shop.orders"}`)
}

// testDemo runs the demo on source and checks it; customers and orders are the topics it must
// name and fill, orderInserts the metric line counting order inserts.
func testDemo(t *testing.T, source, customers, orders, orderInserts string) {
	hookOut := &lockedBuffer{}
	f := flags{source: source, kafka: "127.0.0.1:0", http: "127.0.0.1:0", rate: 50, webhook: true, out: hookOut}
	db, err := f.database()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startc := make(chan started, 1)
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, f, zaptest.NewLogger(t), func(s started) { startc <- s }) }()

	var s started
	select {
	case s = <-startc:
	case err := <-errc:
		t.Fatalf("demo stopped before it started: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("demo did not start within 2m")
	}

	var banner strings.Builder
	printBanner(&banner, f, s)
	for _, want := range []string{
		"Tideline demo is running: " + db.title + " -> ", s.dsn, s.shell,
		customers, orders,
		"kcat -b " + s.brokers[0] + " -C -t " + customers + " -f '%k %s\\n'",
		"apt-get install kcat",
		"http://" + s.httpAddr + "/metrics", "http://" + s.httpAddr + "/readyz",
		"Ctrl-C to stop", duckdbQuery(s), parquetQuery(s), "Webhook      " + s.hook.URL,
	} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, banner.String())
		}
	}

	// Every op on both tables: the snapshot's reads, then the workload's changes. A table is
	// schema.table for PostgreSQL and db.table for MySQL, whose source blocks have no schema:
	// as source.tables names it either way.
	want := map[string]bool{}
	for _, tb := range db.tables {
		for _, op := range []string{"r", "c", "u", "d"} {
			want[tb+" "+op] = true
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...),
		kgo.ConsumeTopics(customers, orders),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer pcancel()
	for len(want) > 0 {
		fs := cl.PollFetches(pctx)
		if pctx.Err() != nil {
			t.Fatalf("no records for %v within 2m", want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Value == nil {
				return // a tombstone
			}
			var env struct {
				Op     string `json:"op"`
				Source struct {
					DB     string `json:"db"`
					Schema string `json:"schema"`
					Table  string `json:"table"`
				} `json:"source"`
			}
			if err := json.Unmarshal(r.Value, &env); err != nil {
				t.Fatalf("record on %s is not a JSON envelope: %v: %s", r.Topic, err, r.Value)
			}
			ns := env.Source.Schema
			if ns == "" {
				ns = env.Source.DB
			}
			delete(want, ns+"."+env.Source.Table+" "+env.Op)
		})
	}

	if body := get(t, "http://"+s.httpAddr+"/metrics"); !strings.Contains(body, orderInserts) {
		t.Errorf("/metrics does not count order inserts:\n%s", body)
	}
	deadline := time.Now().Add(time.Minute)
	for body := get(t, "http://"+s.httpAddr+"/readyz"); body != "ready\n"; body = get(t, "http://"+s.httpAddr+"/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: %q after 1m", body)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The DuckDB warehouse mirrors both tables, snapshot rows and changes alike, and the
	// command the banner prints reads it while the demo runs.
	for _, tb := range db.tables {
		deadline := time.Now().Add(time.Minute)
		for {
			var out strings.Builder
			err := sqlsink.QueryDuckDB(ctx, s.duckdb, "SELECT string_agg(DISTINCT _tideline_op, '' ORDER BY _tideline_op) AS ops FROM "+tb, &out)
			if err == nil && strings.Contains(out.String(), "r") && strings.ContainsAny(out.String(), "cu") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("warehouse table %s after 1m: %q (%v)", tb, out.String(), err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// The change log holds the snapshot's rows and the workload's changes, and the query the
	// banner prints reads it (the first files come within the sink's 5 s linger).
	deadline = time.Now().Add(time.Minute)
	for {
		var out strings.Builder
		err := sqlsink.QueryDuckDB(ctx, sqlsink.InMemory, "SELECT string_agg(DISTINCT _tideline_op, '' ORDER BY _tideline_op) AS ops FROM ("+
			strings.Replace(parquetSQL(s), "LIMIT 10", "", 1)+")", &out)
		if err == nil && strings.Contains(out.String(), "r") && strings.ContainsAny(out.String(), "cu") {
			var last strings.Builder
			if err := sqlsink.QueryDuckDB(ctx, sqlsink.InMemory, parquetSQL(s), &last); err != nil || strings.Count(last.String(), "\n") < 3 {
				t.Errorf("the banner's change-log query: %v\n%s", err, last.String())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("change log after 1m: %q (%v)", out.String(), err)
		}
		time.Sleep(time.Second)
	}
	// The webhook receiver got signed batches of mapped customers (it answers 401 to a bad
	// signature, which the sink would retry: records arriving prove the signature).
	deadline = time.Now().Add(time.Minute)
	for s.hook.records.Load() == 0 || !strings.Contains(hookOut.String(), "upsert customer") {
		if time.Now().After(deadline) {
			t.Fatalf("webhook receiver after 1m: %d records:\n%s", s.hook.records.Load(), hookOut.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := hookOut.String(); !strings.Contains(out, "signature ok") || !strings.Contains(out, `"customer_ref":`) {
		t.Errorf("webhook receiver printed:\n%s", out)
	}
	if body := get(t, "http://"+s.httpAddr+"/metrics"); !strings.Contains(body, `tideline_sink_rows_total{op="r",sink="warehouse"`) {
		t.Errorf("/metrics does not count the warehouse's rows")
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("demo stop: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("demo did not stop within 2m of its cancellation")
	}
	for _, dir := range []string{s.dbDir, s.tmp} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left behind (stat: %v)", dir, err)
		}
	}
}

// TestPortTaken checks that a taken port fails the demo at once, naming the port.
func TestPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	err = run(context.Background(), flags{kafka: ln.Addr().String(), http: "127.0.0.1:0"}, zaptest.NewLogger(t), func(started) {
		t.Error("demo started on a taken port")
	})
	if err == nil || !strings.Contains(err.Error(), "port "+port+" is taken") || !strings.Contains(err.Error(), "-kafka") {
		t.Fatalf("err = %v, want one naming port %s and the -kafka flag", err, port)
	}
}

// TestUnknownSource checks that a -source the demo does not know fails at once.
func TestUnknownSource(t *testing.T) {
	err := run(context.Background(), flags{source: "oracle", kafka: "127.0.0.1:0", http: "127.0.0.1:0"}, zaptest.NewLogger(t), func(started) {
		t.Error("demo started with an unknown source")
	})
	if err == nil || !strings.Contains(err.Error(), `-source "oracle"`) {
		t.Fatalf("err = %v, want one naming -source \"oracle\"", err)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(b)
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
