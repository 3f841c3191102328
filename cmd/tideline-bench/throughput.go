package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// The tables have the same shape, so the workloads differ only in how the
// rows are grouped into transactions. Autovacuum is off for them: a vacuum
// of a freshly loaded table would otherwise land in some reader's measured
// window and not in another's.
const schemaSQL = `
CREATE TABLE public.bench_a (id bigint PRIMARY KEY, name text, qty int, price numeric(12,2), note text, at timestamptz)
  WITH (autovacuum_enabled = false);
CREATE TABLE public.bench_b (id bigint PRIMARY KEY, name text, qty int, price numeric(12,2), note text, at timestamptz)
  WITH (autovacuum_enabled = false);
CREATE TABLE public.bench_c (id bigint PRIMARY KEY, name text, qty int, price numeric(12,2), note text, at timestamptz)
  WITH (autovacuum_enabled = false);
CREATE PUBLICATION bench_pub FOR TABLE public.bench_a, public.bench_b;
CREATE PUBLICATION bench_pub_c FOR TABLE public.bench_c;

-- One transaction per row, generated server-side: a client round trip per
-- transaction would make the load generator, not the readers, the subject.
CREATE PROCEDURE gen_b(first bigint, n int) LANGUAGE plpgsql AS $$
DECLARE id bigint;
BEGIN
  FOR i IN 0..n-1 LOOP
    id := first + i;
    INSERT INTO public.bench_b VALUES (id, 'name-' || id, (id % 1000)::int, (id % 100000) / 100.0, md5(id::text), now());
    COMMIT;
  END LOOP;
END $$;
`

// setupSchema creates the tables, publications and the generator procedure.
func (b *bench) setupSchema(ctx context.Context) error {
	if err := b.exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	return nil
}

// measure is one reader's time to read a workload.
type measure struct {
	took time.Duration
	err  error
	note string  // extra detail for the log and the report
	mem  memPeak // this process's peaks during a Tideline run
}

func (m measure) rate(events int) float64 {
	if m.err != nil || m.took <= 0 {
		return 0
	}
	return float64(events) / m.took.Seconds()
}

// throughput is one workload's result.
type throughput struct {
	label    string
	target   float64 // minimum Tideline / pg_recvlogical ratio
	events   int
	genTook  time.Duration
	walBytes uint64
	recv, tl measure // the fastest of the rounds
	// recvRuns and tlRuns are every round, in order.
	recvRuns, tlRuns []measure
	err              error // setup or load failure: no figures
}

// round returns the suffix of round r's slot and pipeline names.
func round(r int) string {
	if r == 1 {
		return ""
	}
	return fmt.Sprintf("_%d", r)
}

// readerSlots returns the slots of workload w's readers for every round.
func (b *bench) readerSlots(w string) []string {
	var slots []string
	for r := 1; r <= b.o.rounds; r++ {
		slots = append(slots, "recv_"+w+round(r), "tideline_bench_"+w+round(r))
	}
	return slots
}

// measureReaders times pg_recvlogical and Tideline on workload w's WAL,
// alternating, for -rounds rounds, and keeps the fastest of each: on a
// shared machine a slower round measures the neighbours.
func (b *bench) measureReaders(ctx context.Context, res *throughput, w, label string, end pglogrepl.LSN, profile string) {
	for r := 1; r <= b.o.rounds && ctx.Err() == nil; r++ {
		rl := label
		if b.o.rounds > 1 {
			rl = fmt.Sprintf("%s round %d/%d", label, r, b.o.rounds)
		}
		res.recvRuns = append(res.recvRuns, b.runRecvlogical(ctx, rl, "recv_"+w+round(r), end))
		if ctx.Err() != nil {
			break
		}
		prof := ""
		if r == 1 {
			prof = profile
		}
		name := "bench_" + w + round(r)
		res.tlRuns = append(res.tlRuns, b.runTideline(ctx, tlRun{
			label: rl, name: name, slot: "tideline_bench_" + w + round(r), pub: "bench_pub",
			table: "public.bench_" + w, events: res.events, end: end, profile: prof,
		}))
		// The broker keeps every record in memory: free the round's topics
		// so that rounds do not pile up in the next round's memory peak.
		b.deleteTopics(name + ".")
	}
	res.recv, res.tl = fastest(res.recvRuns), fastest(res.tlRuns)
}

// fastest returns the quickest successful run, or the first failure.
func fastest(runs []measure) measure {
	var best measure
	found := false
	for _, m := range runs {
		if m.err == nil && (!found || m.took < best.took) {
			best, found = m, true
		}
	}
	if !found && len(runs) > 0 {
		return runs[0]
	}
	return best
}

// workloadBig is workload A: rows inserted in big transactions. It also
// times pg_recvlogical with binary=true on the same WAL.
func (b *bench) workloadBig(ctx context.Context) (res throughput, binary measure) {
	n := b.o.big
	res = throughput{
		label:  fmt.Sprintf("A: %s rows, %s per transaction", thousands(n), thousands(b.o.txSize)),
		target: 0.7, events: n,
	}
	slots := append(b.readerSlots("a"), "recv_a_bin")
	defer b.deleteTopics("bench_a")
	defer b.dropSlots(slots...)
	if err := b.createSlots(ctx, slots...); err != nil {
		res.err = err
		return res, measure{err: err}
	}

	b.logf("A: generating %d rows in transactions of %d", n, b.o.txSize)
	c, err := b.connect(ctx)
	if err != nil {
		res.err = err
		return res, measure{err: err}
	}
	startLSN, _ := b.walLSN(ctx, c)
	t0 := time.Now()
	err = func() error {
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "SET synchronous_commit = off"); err != nil {
			return err
		}
		last := time.Now()
		for lo := 1; lo <= n; lo += b.o.txSize {
			hi := min(lo+b.o.txSize-1, n)
			// Literal bounds: a statement without arguments goes through
			// the simple protocol, one round trip per transaction.
			sql := fmt.Sprintf(`INSERT INTO public.bench_a
				SELECT g, 'name-' || g, (g %% 1000)::int, (g %% 100000) / 100.0, md5(g::text), now()
				FROM generate_series(%d::bigint, %d::bigint) g`, lo, hi)
			if _, err := c.Exec(ctx, sql); err != nil {
				return err
			}
			if time.Since(last) > 5*time.Second {
				b.logf("A: %d/%d rows inserted", hi, n)
				last = time.Now()
			}
		}
		return nil
	}()
	if err != nil {
		res.err = fmt.Errorf("generate workload A: %w", err)
		return res, measure{err: res.err}
	}
	end, err := b.endOfLoad(ctx)
	if err != nil {
		res.err = err
		return res, measure{err: err}
	}
	res.genTook = time.Since(t0)
	if startLSN > 0 && end > startLSN {
		res.walBytes = uint64(end - startLSN)
	}
	b.logf("A: generated in %s, %.1f MiB of WAL, end %s", res.genTook.Round(time.Millisecond), float64(res.walBytes)/(1<<20), end)

	b.measureReaders(ctx, &res, "a", "A", end, b.o.cpuProfile)
	if ctx.Err() != nil {
		return res, binary
	}
	binary = b.runRecvlogical(ctx, "A binary", "recv_a_bin", end, "-o", "binary=true")
	return res, binary
}

// workloadSingle is workload B: single-row transactions.
func (b *bench) workloadSingle(ctx context.Context) (res throughput) {
	n := b.o.single
	res = throughput{label: fmt.Sprintf("B: %s single-row transactions", thousands(n)), target: 0.8, events: n}
	slots := b.readerSlots("b")
	defer b.deleteTopics("bench_b")
	defer b.dropSlots(slots...)
	if err := b.createSlots(ctx, slots...); err != nil {
		res.err = err
		return res
	}

	conns := min(b.o.genConns, n)
	b.logf("B: generating %d single-row transactions on %d connections", n, conns)
	c, err := b.connect(ctx)
	if err != nil {
		res.err = err
		return res
	}
	defer c.Close(context.Background())
	startLSN, _ := b.walLSN(ctx, c)
	var startXid int64
	_ = c.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&startXid)

	t0 := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	per := n / conns
	for i := range conns {
		first, cnt := 1+i*per, per
		if i == conns-1 {
			cnt = n - i*per
		}
		g.Go(func() error {
			gc, err := b.connect(gctx)
			if err != nil {
				return err
			}
			defer gc.Close(context.Background())
			if _, err := gc.Exec(gctx, "SET synchronous_commit = off"); err != nil {
				return err
			}
			_, err = gc.Exec(gctx, fmt.Sprintf("CALL gen_b(%d, %d)", first, cnt))
			return err
		})
	}
	genDone := make(chan error, 1)
	go func() { genDone <- g.Wait() }()
	tick := time.NewTicker(5 * time.Second)
	err = nil
wait:
	for {
		select {
		case err = <-genDone:
			break wait
		case <-tick.C:
			// Every generated transaction takes one xid, so the xid
			// counter shows the progress of the server-side loops.
			var xid int64
			if c.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&xid) == nil {
				done := xid - startXid
				b.logf("B: ~%d/%d transactions committed (%.0f tx/s)", done, n, float64(done)/time.Since(t0).Seconds())
			}
		}
	}
	tick.Stop()
	if err != nil {
		res.err = fmt.Errorf("generate workload B: %w", err)
		return res
	}
	end, err := b.endOfLoad(ctx)
	if err != nil {
		res.err = err
		return res
	}
	res.genTook = time.Since(t0)
	if startLSN > 0 && end > startLSN {
		res.walBytes = uint64(end - startLSN)
	}
	b.logf("B: generated in %s (%.0f tx/s), %.1f MiB of WAL, end %s", res.genTook.Round(time.Millisecond),
		float64(n)/res.genTook.Seconds(), float64(res.walBytes)/(1<<20), end)

	prof := ""
	if b.o.cpuProfile != "" {
		prof = b.o.cpuProfile + ".single"
	}
	b.measureReaders(ctx, &res, "b", "B", end, prof)
	return res
}

// runRecvlogical times pg_recvlogical reading slot from its start to end,
// its output thrown away.
func (b *bench) runRecvlogical(ctx context.Context, label, slot string, end pglogrepl.LSN, extra ...string) measure {
	args := []string{
		"-d", b.dsn, "-S", slot, "--start", "--endpos=" + end.String(), "--no-loop",
		"-o", "proto_version=1", "-o", "publication_names=bench_pub", "-f", "/dev/null",
	}
	args = append(args, extra...)
	took, err := b.timeCommand(ctx, label, b.recvlogical, "pg_recvlogical", args)
	if err != nil {
		return measure{err: err}
	}
	m := measure{took: took}
	if conf := b.slotConfirmed(ctx, slot); conf < end {
		m.note = fmt.Sprintf("slot confirmed %s < end %s", conf, end)
	}
	b.logf("%s: pg_recvlogical read to %s in %s%s", label, end, took.Round(time.Millisecond), prefixed(m.note))
	return m
}

// tlRun describes one Tideline throughput run.
type tlRun struct {
	label, name, slot, pub, table string
	events                        int
	end                           pglogrepl.LSN
	profile                       string // CPU profile file, "" for none
	// cfg, when set, is the pipeline's config (the MySQL workloads); else
	// a PostgreSQL one is built from name, slot, pub and table.
	cfg *config.Config
}

// timeCommand runs bin with args (output thrown away, at most 20 minutes),
// logging progress every 5 s, and returns how long it took.
func (b *bench) timeCommand(ctx context.Context, label, bin, name string, args []string) (time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b.logf("%s: %s %s > /dev/null", label, bin, strings.Join(args, " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			took := time.Since(start)
			if err != nil {
				return took, fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
			}
			return took, nil
		case <-tick.C:
			b.logf("%s: %s running for %s", label, name, time.Since(start).Round(time.Second))
		}
	}
}

// tidelineConfig returns a validated config streaming table from an
// existing slot, with no snapshot, to the bench's broker.
func (b *bench) tidelineConfig(name, slot, pub, table string, status time.Duration) (*config.Config, error) {
	c := &config.Config{
		Name: name,
		Source: config.Source{
			Type: "postgres", DSN: config.Secret(b.dsn), Tables: []string{table},
			Snapshot: "never", Slot: slot, Publication: pub, StatusInterval: status,
		},
		Kafka: config.Kafka{Brokers: b.brokers, Compression: b.o.compress},
		HTTP:  config.HTTP{Listen: "off"},
		Log:   config.Log{Level: "warn", Format: "console"},
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// runTideline times daemon.Run from its start until every one of r.events
// events is acknowledged by Kafka: the events counter (counted at hand-off
// to the publisher) has them all and nothing is in flight.
func (b *bench) runTideline(ctx context.Context, r tlRun) measure {
	cfg := r.cfg
	if cfg == nil {
		var err error
		if cfg, err = b.tidelineConfig(r.name, r.slot, r.pub, r.table, 100*time.Millisecond); err != nil {
			return measure{err: err}
		}
	}
	log, err := observe.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return measure{err: err}
	}
	m := observe.NewMetrics()
	stopProfile := func() {}
	if r.profile != "" {
		f, err := os.Create(r.profile)
		if err != nil {
			return measure{err: fmt.Errorf("cpu profile: %w", err)}
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return measure{err: fmt.Errorf("cpu profile: %w", err)}
		}
		stopProfile = sync.OnceFunc(func() {
			pprof.StopCPUProfile()
			f.Close()
			b.logf("%s: CPU profile of the Tideline run written to %s", r.label, r.profile)
		})
	}
	defer stopProfile()

	if r.slot != "" {
		b.logf("%s: Tideline streaming slot %s to Kafka", r.label, r.slot)
	} else {
		b.logf("%s: Tideline streaming %s to Kafka", r.label, r.table)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	b.mem.begin()
	start := time.Now()
	go func() { done <- daemon.Run(rctx, cfg, log, daemon.Options{Metrics: m}) }()

	res := b.waitAcked(ctx, r, m, start, done)
	res.mem = b.mem.end()
	stopProfile() // the shutdown below is not part of the figure
	if res.err == nil && r.slot != "" {
		// The figure is the acknowledgement; the slot's confirmed position
		// follows at the next status update and is only logged.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if conf := b.slotConfirmed(ctx, r.slot); conf >= r.end {
				b.logf("%s: slot %s confirmed %s, %s after the last ack", r.label, r.slot, conf, (time.Since(start) - res.took).Round(time.Millisecond))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && res.err == nil {
			res.note = fmt.Sprintf("daemon.Run returned %v on shutdown", err)
			b.logf("%s: %s", r.label, res.note)
		}
	case <-time.After(2 * time.Minute):
		// Leaving the goroutine behind is the lesser evil in a program
		// that reports and exits.
		if res.err == nil {
			res.err = errors.New("tideline did not stop within 2 minutes of cancel")
		}
	}
	if c := sumMetric(m.Errors); c > 0 {
		res.note = strings.TrimSpace(res.note + fmt.Sprintf(" (%.0f errors counted)", c))
	}
	return res
}

// waitAcked polls the metrics every 20 ms until all events are acked, the
// daemon stops, or nothing moves for two minutes.
func (b *bench) waitAcked(ctx context.Context, r tlRun, m *observe.Metrics, start time.Time, done <-chan error) measure {
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	lastLog, lastMove, lastEvents := time.Now(), time.Now(), 0.0
	want := float64(r.events)
	for {
		select {
		case <-ctx.Done():
			return measure{err: ctx.Err()}
		case err := <-done:
			return measure{err: fmt.Errorf("tideline stopped before every event was acknowledged: %v", err)}
		case <-poll.C:
		}
		events, inflight := sumMetric(m.Events), sumMetric(m.InFlightBytes)
		if events >= want && inflight == 0 {
			took := time.Since(start)
			b.logf("%s: Tideline: %.0f events acknowledged by Kafka in %s", r.label, events, took.Round(time.Millisecond))
			return measure{took: took}
		}
		if events != lastEvents {
			lastEvents, lastMove = events, time.Now()
		} else if time.Since(lastMove) > 2*time.Minute {
			return measure{err: fmt.Errorf("stalled at %.0f/%d events, %.0f bytes in flight", events, r.events, inflight)}
		}
		if time.Since(lastLog) > 5*time.Second {
			b.logf("%s: Tideline: %.0f/%d events handed over (%.0f/s), %.1f MiB in flight", r.label, events, r.events,
				events/time.Since(start).Seconds(), inflight/(1<<20))
			lastLog = time.Now()
		}
	}
}

// sumMetric sums every series of a counter or gauge vector.
func sumMetric(c prometheus.Collector) float64 {
	return collectSum(c, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() + m.GetGauge().GetValue() })
}

// collectSum adds value(m) over every series c collects.
func collectSum(c prometheus.Collector, value func(*dto.Metric) float64) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var sum float64
	for m := range ch {
		var pm dto.Metric
		if m.Write(&pm) == nil {
			sum += value(&pm)
		}
	}
	return sum
}

func prefixed(note string) string {
	if note == "" {
		return ""
	}
	return " (" + note + ")"
}
