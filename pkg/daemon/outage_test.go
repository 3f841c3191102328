package daemon_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
)

func (e *env) query(sql string, dst ...any) {
	e.t.Helper()
	c := e.conn()
	if err := c.QueryRow(context.Background(), sql).Scan(dst...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// restartableBroker returns a function that starts a kfake broker on one
// port and data dir, so a test can close it and start it again with the
// records it had.
func restartableBroker(t *testing.T) func() *kfake.Cluster {
	t.Helper()
	dataDir := t.TempDir()
	port, _ := freePort(t)
	return func() *kfake.Cluster {
		k, err := testenv.StartKafka(kfake.DataDir(dataDir), kfake.Ports(port))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

// outage watches a running daemon for d while its broker is down and the
// writer w commits: the daemon must stay up, and the in-flight bytes must
// fill the budget (else the outage proved nothing) without passing it by
// more than one batch. It returns the peak.
func (r *running) outage(t *testing.T, w *writer, d time.Duration, budget, batch float64) float64 {
	t.Helper()
	before := w.count.Load()
	inflight := r.metrics.InFlightBytes.WithLabelValues("test")
	var peak float64
	for end := time.Now().Add(d); time.Now().Before(end); {
		peak = max(peak, testutil.ToFloat64(inflight))
		select {
		case err := <-r.done:
			t.Fatalf("daemon exited during the outage: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if written := w.count.Load() - before; written < 100 {
		t.Fatalf("writer committed only %d transactions during the outage", written)
	}
	if peak > budget+batch {
		t.Errorf("in-flight bytes peaked at %.0f during the outage, over budget %.0f + batch %.0f", peak, budget, batch)
	}
	if peak < budget/2 {
		t.Errorf("in-flight bytes peaked at %.0f: the outage did not fill the budget, the test proves nothing", peak)
	}
	return peak
}

// TestKafkaOutage stops the broker while a writer commits: reading pauses
// within the in-flight budget, the replication connection stays alive, the
// process stays up, and once the broker is back every change arrives.
func TestKafkaOutage(t *testing.T) {
	startBroker := restartableBroker(t)
	k := startBroker()
	pg := testenv.NewPostgres(t, testenv.PGOptions{ExtraConf: map[string]string{"wal_sender_timeout": "3s"}})
	e := &env{t: t, pg: pg, brokers: k.ListenAddrs()}
	e.exec("CREATE TABLE public.kv (id bigint PRIMARY KEY, v bigint NOT NULL, pad text)")
	e.exec("INSERT INTO public.kv SELECT g, 1, repeat('p', 200) FROM generate_series(1, 200) g")
	const budget, batch = 1 << 20, 32 << 10
	r := e.start(e.config([]string{"public.kv"}, func(c *config.Config) {
		c.Capture.MaxInFlightBytes = budget
		c.Capture.BatchBytes = batch
	}), daemon.Options{})
	w := startWriter(t, e.pg.DSN("postgres"), 201, 200)
	time.Sleep(time.Second)
	var pidBefore int
	e.query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'tideline_test'", &pidBefore)

	k.Close()
	peak := r.outage(t, w, 8*time.Second, budget, batch) // well past wal_sender_timeout
	var pidDuring int
	e.query("SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = 'tideline_test'", &pidDuring)
	if pidDuring != pidBefore {
		t.Errorf("replication connection changed during the outage: walsender pid %d, then %d", pidBefore, pidDuring)
	}

	k = startBroker()
	t.Cleanup(k.Close)
	time.Sleep(time.Second)
	committed := w.halt()
	c := e.consume("test.public.kv")
	ms := consumeUntil(t, c, committed, 90*time.Second)
	dups := checkKV(t, ms, committed, true)
	t.Logf("outage: peak in-flight %.0f bytes (budget %d); %d events after the broker returned, %d duplicates", peak, budget, len(ms), dups)
	r.stop(t)
}

// TestIdleTableDoesNotRetainWAL captures a table that sees no writes while
// another table churns WAL: keepalives move the slot, so the server does not
// keep that WAL.
func TestIdleTableDoesNotRetainWAL(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.quiet (id int PRIMARY KEY);
		CREATE TABLE public.churn (id bigint, pad text)`)
	r := e.start(e.config([]string{"public.quiet"}, func(c *config.Config) { c.Source.Snapshot = "never" }), daemon.Options{})
	var start string
	e.query("SELECT pg_current_wal_lsn()::text", &start)
	for i := 0; i < 4; i++ {
		e.exec("INSERT INTO public.churn SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 20000) g")
	}
	var churned int64
	e.query(fmt.Sprintf("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '%s')::bigint", start), &churned)
	if churned < 64<<20 {
		t.Fatalf("churn wrote only %d MiB of WAL", churned>>20)
	}
	e.exec("CHECKPOINT")
	var lag, retained int64
	waitFor(t, 60*time.Second, "the slot to follow the WAL", func() (bool, error) {
		e.exec("CHECKPOINT") // logs running transactions, so restart_lsn can move
		e.query(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
			pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
			FROM pg_replication_slots WHERE slot_name = 'tideline_test'`, &lag, &retained)
		return lag < 1<<20 && retained < 16<<20, nil
	})
	t.Logf("churned %d MiB of WAL; slot confirmed lag %d bytes, retained %d KiB", churned>>20, lag, retained>>10)
	r.stop(t)
}

// TestKcatReadsEmbeddedBroker runs the embedded broker and reads the topic
// with kcat (librdkafka), and checks that kcat's murmur2 partitioner puts
// every key on the partition Tideline chose.
func TestKcatReadsEmbeddedBroker(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is not installed (make test installs it: apt-get install kcat)")
	}
	pg := testenv.NewPostgres(t, testenv.PGOptions{})
	port, _ := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	e := &env{t: t, pg: pg, brokers: []string{addr}}
	e.exec("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
	e.exec("INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 40) g")
	const partitions = 4
	dataDir := t.TempDir()
	cfg := e.config([]string{"public.items"}, func(c *config.Config) {
		c.Kafka.Brokers = []string{config.Embedded}
		c.Kafka.Embedded = config.EmbeddedBroker{Listen: addr, DataDir: dataDir}
		c.Kafka.Topics.Partitions = partitions
	})
	r := e.start(cfg, daemon.Options{})
	e.exec("UPDATE public.items SET name = 'renamed' WHERE id <= 10")

	var out []byte
	waitFor(t, 30*time.Second, "kcat to read 50 records", func() (bool, error) {
		out, err = exec.Command(kcat, "-b", addr, "-C", "-t", "test.public.items", "-o", "beginning", "-e", "-q",
			"-f", "%p\t%k\t%s\n").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("kcat: %v: %s", err, out)
		}
		return strings.Count(string(out), "\n") >= 50, nil
	})
	partOf := map[string]string{}
	ops := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 || !strings.HasPrefix(f[1], `{"id":`) || !strings.Contains(f[2], `"op":"`) {
			t.Fatalf("kcat line is not key<TAB>envelope: %q", line)
		}
		if p, ok := partOf[f[1]]; ok && p != f[0] {
			t.Errorf("key %s on partitions %s and %s", f[1], p, f[0])
		}
		partOf[f[1]] = f[0]
		ops[f[2][strings.Index(f[2], `"op":"`)+6:][:1]]++
	}
	if ops["r"] != 40 || ops["u"] != 10 || len(partOf) != 40 {
		t.Errorf("kcat read ops %v for %d keys, want 40 r and 10 u for 40 keys", ops, len(partOf))
	}

	// kcat producing the same keys with librdkafka's Java-compatible
	// murmur2 partitioner must pick the same partitions.
	cl := kgoClient(t, []string{addr})
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), partitions, 1, nil, "probe"); err != nil {
		t.Fatal(err)
	}
	var in strings.Builder
	for k := range partOf {
		in.WriteString(k + "\tx\n")
	}
	prod := exec.Command(kcat, "-b", addr, "-P", "-t", "probe", "-K", "\t", "-X", "topic.partitioner=murmur2")
	prod.Stdin = strings.NewReader(in.String())
	if out, err := prod.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce: %v: %s", err, out)
	}
	got := map[string]string{}
	waitFor(t, 30*time.Second, "probe records", func() (bool, error) {
		out, err := exec.Command(kcat, "-b", addr, "-C", "-t", "probe", "-o", "beginning", "-e", "-q", "-f", "%p\t%k\n").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("kcat: %v: %s", err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if p, k, ok := strings.Cut(line, "\t"); ok {
				got[k] = p
			}
		}
		return len(got) >= len(partOf), nil
	})
	spread := map[string]bool{}
	for k, p := range partOf {
		spread[p] = true
		if got[k] != p {
			t.Errorf("key %s: Tideline chose partition %s, librdkafka murmur2 chose %s", k, p, got[k])
		}
	}
	if len(spread) < 2 {
		t.Errorf("all 40 keys on one partition: the comparison proves nothing")
	}

	// The broker's topics carry retention, so its memory and disk stay
	// bounded.
	rc, err := kadm.NewClient(cl).DescribeTopicConfigs(context.Background(), "test.public.items")
	if err != nil {
		t.Fatal(err)
	}
	retention := map[string]string{}
	for _, c := range rc {
		for _, v := range c.Configs {
			if v.Value != nil {
				retention[v.Key] = *v.Value
			}
		}
	}
	if retention["retention.ms"] != "86400000" || retention["retention.bytes"] != fmt.Sprint(256<<20) {
		t.Errorf("topic retention: retention.ms=%q retention.bytes=%q, want the embedded defaults", retention["retention.ms"], retention["retention.bytes"])
	}
	cl.Close()
	r.stop(t)

	// The broker persists to its data dir: after a restart the records are
	// still there, and the snapshot is not taken again.
	r = e.start(cfg, daemon.Options{})
	e.exec("INSERT INTO public.items VALUES (41, 'late')")
	waitFor(t, 30*time.Second, "kcat to read the old records and the new one", func() (bool, error) {
		out, err = exec.Command(kcat, "-b", addr, "-C", "-t", "test.public.items", "-o", "beginning", "-e", "-q", "-f", "%s\n").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("kcat: %v: %s", err, out)
		}
		return strings.Contains(string(out), `"id":41`), nil
	})
	if n := strings.Count(string(out), `"op":"r"`); n != 40 {
		t.Errorf("after a restart on the same data dir: %d snapshot rows, want the 40 from the first run", n)
	}
	r.stop(t)
}

// TestKillDuringSnapshot kills tideline while the initial snapshot is being
// delivered; the next run takes the snapshot again from a new slot and then
// streams.
func TestKillDuringSnapshot(t *testing.T) {
	e := newEnv(t)
	const rows = 300_000
	e.exec("CREATE TABLE public.big (id bigint PRIMARY KEY, pad text)")
	e.exec(fmt.Sprintf("INSERT INTO public.big SELECT g, repeat('y', 50) FROM generate_series(1, %d) g", rows))
	port, _ := freePort(t)
	cfg := e.writeConfig([]string{"public.big"}, httpConfig(port)+"capture:\n  max_inflight_bytes: 2MiB\n  batch_bytes: 64KiB\n")
	p := startProc(t, cfg, port)
	waitFor(t, 60*time.Second, "snapshot under way", func() (bool, error) {
		v, err := p.metric("tideline_snapshot_rows_total")
		return err == nil && v >= 20000, nil
	})
	p.kill9()
	adm := kadm.NewClient(kgoClient(t, e.brokers))
	ends, err := adm.ListEndOffsets(context.Background(), "test.public.big")
	if err != nil {
		t.Fatal(err)
	}
	cut, _ := ends.Lookup("test.public.big", 0)
	if cut.Offset >= rows {
		t.Fatalf("the whole snapshot (%d records) was delivered before the kill: the test proves nothing", cut.Offset)
	}
	p = startProc(t, cfg, port)
	p.waitReady(120 * time.Second)
	if !strings.Contains(p.log(), "initial snapshot did not finish") {
		t.Errorf("restart did not say it retakes the snapshot:\n%s", p.log())
	}
	e.exec(fmt.Sprintf("INSERT INTO public.big VALUES (%d, 'after')", rows+1))

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{"test.public.big": {0: kgo.NewOffset().At(cut.Offset)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seen := make([]bool, rows+1)
	var nSeen int
	streamed := false
	deadline := time.Now().Add(2 * time.Minute)
	for (nSeen < rows || !streamed) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(rec *kgo.Record) {
			v := string(rec.Value)
			var id int
			fmt.Sscanf(string(rec.Key), `{"id":%d}`, &id)
			switch {
			case strings.Contains(v, `"op":"r"`) && id >= 1 && id <= rows && !seen[id]:
				seen[id] = true
				nSeen++
			case strings.Contains(v, `"op":"c"`) && id == rows+1:
				streamed = true
			}
		})
	}
	if nSeen != rows || !streamed {
		t.Errorf("after the restart: %d of %d rows snapshotted again, streamed insert seen: %v", nSeen, rows, streamed)
	}
	p.term(60 * time.Second)
}

// TestPostgresRestart kills PostgreSQL under a running pipeline: Tideline
// stays up, reconnects by itself from the slot's confirmed position, and
// every committed change arrives.
func TestPostgresRestart(t *testing.T) {
	e := newEnv(t)
	e.exec("CREATE TABLE public.r (id int PRIMARY KEY)")
	r := e.start(e.config([]string{"public.r"}, func(c *config.Config) { c.Source.Snapshot = "never" }), daemon.Options{})
	e.exec("INSERT INTO public.r SELECT generate_series(1, 100)")
	e.pg.Kill()
	if err := e.pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.exec("INSERT INTO public.r SELECT generate_series(101, 200)")
	c := e.consume("test.public.r")
	ms := c.poll(200, 90*time.Second, isEvent)
	ids := map[string]bool{}
	for _, m := range ms {
		ids[fmt.Sprint(m.Key["id"])] = true
	}
	if len(ids) != 200 {
		t.Errorf("%d distinct rows after the restart, want 200", len(ids))
	}
	select {
	case err := <-r.done:
		t.Fatalf("daemon exited on a PostgreSQL restart: %v", err)
	default:
	}
	if n := testutil.ToFloat64(r.metrics.Errors.WithLabelValues("test", "source")); n < 1 {
		t.Errorf("tideline_errors_total{component=source} = %v, want the lost connection counted", n)
	}
	r.stop(t)
}
