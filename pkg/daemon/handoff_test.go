package daemon_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
)

// writer commits single-statement transactions on public.kv until stopped:
// updates bump v of an existing id by one, inserts add an id with v = 1.
// It records every committed (id, v), so a test can check that each one
// reached Kafka.
type writer struct {
	mu        sync.Mutex
	committed map[int64]int64 // id -> highest committed v
	count     atomic.Int64
	stop      context.CancelFunc
	done      chan struct{}
}

func startWriter(t *testing.T, dsn string, firstNew int64, seeded int64) *writer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{committed: map[int64]int64{}, stop: cancel, done: make(chan struct{})}
	for id := int64(1); id <= seeded; id++ {
		w.committed[id] = 1
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		next := firstNew
		for ctx.Err() == nil {
			var id int64
			var v int64
			var err error
			if rand.IntN(4) == 0 {
				id = next
				// Not ctx: a cancel must not cut a commit whose outcome we
				// would then not know.
				err = conn.QueryRow(context.Background(), "INSERT INTO public.kv (id, v) VALUES ($1, 1) RETURNING v", id).Scan(&v)
				if err == nil {
					next++
				}
			} else {
				w.mu.Lock()
				id = rand.Int64N(next-1) + 1
				w.mu.Unlock()
				err = conn.QueryRow(context.Background(), "UPDATE public.kv SET v = v + 1 WHERE id = $1 RETURNING v", id).Scan(&v)
			}
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			w.mu.Lock()
			w.committed[id] = v
			w.mu.Unlock()
			w.count.Add(1)
		}
	}()
	return w
}

func (w *writer) halt() map[int64]int64 {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.committed
}

// checkKV checks the kv events per key: after dropping replays with the
// documented rule (an event whose (transaction lsn, total_order) is not
// after the last one kept for its key is a duplicate), the values of each
// key are exactly 1, 2, 3, … up to the last committed one, with no gap and
// no repeat. It returns the number of duplicates dropped.
func checkKV(t *testing.T, ms []msg, committed map[int64]int64, allowDuplicates bool) int {
	t.Helper()
	type pos struct{ lsn, order int64 }
	type val struct {
		v     int64
		reset bool // a snapshot row: history before it is not replayed
	}
	last := map[int64]pos{}
	vals := map[int64][]val{}
	dups := 0
	for _, m := range ms {
		if m.Value == nil || m.Value.After == nil {
			continue
		}
		id := toInt(t, m.Key["id"])
		v := toInt(t, m.Value.After["v"])
		var p pos
		if m.Value.Transaction != nil {
			var xid int64
			if _, err := fmt.Sscanf(m.Value.Transaction.ID, "%d:%d", &xid, &p.lsn); err != nil {
				t.Fatalf("transaction.id %q: %v", m.Value.Transaction.ID, err)
			}
			p.order = m.Value.Transaction.TotalOrder
		}
		if lp, ok := last[id]; ok && m.Value.Op != "r" && (p.lsn < lp.lsn || p.lsn == lp.lsn && p.order <= lp.order) {
			dups++
			continue
		}
		last[id] = p
		vals[id] = append(vals[id], val{v: v, reset: m.Value.Op == "r"})
	}
	if dups > 0 && !allowDuplicates {
		t.Errorf("%d duplicate events", dups)
	}
	for id, want := range committed {
		got := vals[id]
		if len(got) == 0 {
			t.Errorf("id %d: no events, want values up to %d", id, want)
			continue
		}
		for i := 1; i < len(got); i++ {
			if !got[i].reset && got[i].v != got[i-1].v+1 {
				t.Errorf("id %d: values %v: gap or repeat at position %d", id, got, i)
				break
			}
		}
		if got[len(got)-1].v != want {
			t.Errorf("id %d: last value %d, want %d (values %v)", id, got[len(got)-1].v, want, got)
		}
	}
	return dups
}

func toInt(t *testing.T, v any) int64 {
	t.Helper()
	var n int64
	if _, err := fmt.Sscan(fmt.Sprint(v), &n); err != nil {
		t.Fatalf("%v is not an integer", v)
	}
	return n
}

// consumeUntil polls until every committed (id, v) has been seen.
func consumeUntil(t *testing.T, c *consumer, committed map[int64]int64, timeout time.Duration) []msg {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.fetch(time.Second)
		ms := c.all(isEvent)
		seen := map[int64]int64{}
		for _, m := range ms {
			if m.Value.After != nil {
				id := toInt(t, m.Key["id"])
				seen[id] = max(seen[id], toInt(t, m.Value.After["v"]))
			}
		}
		missing := 0
		for id, v := range committed {
			if seen[id] < v {
				missing++
			}
		}
		if missing == 0 {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys still lack their last committed value after %s", missing, timeout)
		}
	}
}

func TestSnapshotHandoffUnderConcurrentWrites(t *testing.T) {
	e := newEnv(t)
	const seeded = 3000
	e.exec("CREATE TABLE public.kv (id bigint PRIMARY KEY, v bigint NOT NULL)")
	e.exec(fmt.Sprintf("INSERT INTO public.kv SELECT g, 1 FROM generate_series(1, %d) g", seeded))
	w := startWriter(t, e.pg.DSN("postgres"), seeded+1, seeded)
	waitFor(t, 10*time.Second, "writer to start", func() (bool, error) { return w.count.Load() > 50, nil })
	// The snapshot is taken while the writer commits.
	r := e.start(e.config([]string{"public.kv"}, nil), daemon.Options{})
	time.Sleep(2 * time.Second)
	committed := w.halt()
	t.Logf("writer committed %d transactions", w.count.Load())
	c := e.consume("test.public.kv")
	ms := consumeUntil(t, c, committed, 60*time.Second)
	snapshotRows := 0
	marks := map[string]int{}
	for _, m := range ms {
		if m.Value.Op == "r" {
			snapshotRows++
			marks[m.Value.Source.Snapshot]++
		}
	}
	if marks["first"] != 1 || marks["last"] != 1 || marks["first"]+marks["last"]+marks["true"] != snapshotRows {
		t.Errorf("snapshot markers %v: want one first, one last, the rest true", marks)
	}
	if snapshotRows < seeded {
		t.Errorf("snapshot rows: %d, want at least %d", snapshotRows, seeded)
	}
	checkKV(t, ms, committed, false)
	r.stop(t)
}

func TestPreconditionErrors(t *testing.T) {
	log := zap.NewNop()
	run := func(t *testing.T, c *config.Config) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return daemon.Run(ctx, c, log, daemon.Options{})
	}
	wantErr := func(t *testing.T, err error, parts ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("no error, want one mentioning %q", parts)
		}
		for _, p := range parts {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not mention %q", err, p)
			}
		}
	}

	t.Run("wal_level", func(t *testing.T) {
		pg := testenv.NewPostgres(t, testenv.PGOptions{WALLevel: "replica"})
		k := testenv.NewKafka(t)
		e := &env{t: t, pg: pg, brokers: k.ListenAddrs()}
		e.exec("CREATE TABLE public.a (id int PRIMARY KEY)")
		err := run(t, e.config([]string{"public.a"}, nil))
		wantErr(t, err, `wal_level is "replica"`, "wal_level = logical")
		if !strings.Contains(err.Error(), "restart") {
			t.Errorf("error does not say a restart is needed: %v", err)
		}
	})

	e := newEnv(t)
	e.exec(`CREATE TABLE public.ok (id int PRIMARY KEY);
		CREATE TABLE public.nokey (a int);
		CREATE ROLE norepl LOGIN PASSWORD 's3cret-pw';
		GRANT SELECT ON ALL TABLES IN SCHEMA public TO norepl;`)

	t.Run("no primary key", func(t *testing.T) {
		wantErr(t, run(t, e.config([]string{"public.nokey"}, nil)), "public.nokey", "no primary key", "REPLICA IDENTITY FULL")
	})
	t.Run("missing table", func(t *testing.T) {
		wantErr(t, run(t, e.config([]string{"public.nope"}, nil)), `"public.nope" matches no table`)
	})
	t.Run("no replication privilege", func(t *testing.T) {
		dsn := strings.Replace(e.pg.DSN("postgres"), "postgres@", "norepl:s3cret-pw@", 1)
		err := run(t, e.config([]string{"public.ok"}, func(c *config.Config) { c.Source.DSN = config.Secret(dsn) }))
		wantErr(t, err, `role "norepl" may not replicate`, `ALTER ROLE "norepl" WITH REPLICATION`)
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("error shows the password: %v", err)
		}
	})
	t.Run("unreachable database", func(t *testing.T) {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		dsn := fmt.Sprintf("postgres://postgres:s3cret-pw@127.0.0.1:%d/postgres", port)
		core, logs := observerLogger()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		err = daemon.Run(ctx, e.config([]string{"public.ok"}, func(c *config.Config) { c.Source.DSN = config.Secret(dsn) }), core, daemon.Options{})
		wantErr(t, err, "connect to PostgreSQL at postgres://postgres:xxxxx@127.0.0.1:", "connection refused")
		if !capture.IsFatal(err) {
			t.Errorf("unreachable database at start should stop the daemon, got %v", err)
		}
		if strings.Contains(err.Error(), "s3cret-pw") || strings.Contains(logs.String(), "s3cret-pw") {
			t.Errorf("password leaked: error %v, logs %s", err, logs.String())
		}
	})
}
