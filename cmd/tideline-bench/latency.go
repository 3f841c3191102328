package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// latency is the commit -> Kafka-ack result.
type latency struct {
	rate      int // asked for, tx/s
	workers   int
	committed int64
	genTook   time.Duration
	samples   []time.Duration // sorted
	isolatedN int
	isolated  []time.Duration // sorted
	mem       memPeak
	events    float64
	err       error
}

func (l latency) achieved() float64 {
	if l.genTook <= 0 {
		return 0
	}
	return float64(l.committed) / l.genTook.Seconds()
}

func (l latency) pct(p float64) time.Duration { return pct(l.samples, p) }

// pct returns the nearest-rank percentile p (0 < p <= 1) of sorted samples.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// workloadLatency streams bench_c with Tideline (default capture settings,
// status every second) while single-row transactions commit at a paced
// rate, with synchronous_commit on, and measures each acked batch's
// commit -> Kafka-ack time. A batch's commit time is its oldest
// transaction's, so the figure is conservative for the others in it.
func (b *bench) workloadLatency(ctx context.Context) (res latency) {
	res = latency{rate: b.o.rate, workers: b.o.latWorkers}
	const slot = "tideline_bench_c"
	defer b.deleteTopics("bench_c")
	defer b.dropSlots(slot)
	if err := b.settle(ctx); err != nil {
		res.err = err
		return res
	}
	if err := b.createSlots(ctx, slot); err != nil {
		res.err = err
		return res
	}
	cfg, err := b.tidelineConfig("bench_c", slot, "bench_pub_c", "public.bench_c", time.Second)
	if err != nil {
		res.err = err
		return res
	}
	log, err := observe.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		res.err = err
		return res
	}
	m := observe.NewMetrics()

	// measureFrom is set (unix µs) before the first transaction commits;
	// until then OnAck keeps nothing. Transactions that committed in the
	// warm-up are dropped by their commit time.
	var measureFrom atomic.Int64
	measureFrom.Store(1<<63 - 1)
	var mu sync.Mutex
	samples := make([]time.Duration, 0, b.o.rate*int(b.o.duration/time.Second)+1024)
	var commits []int64 // for -latency-csv, in step with samples
	onAck := func(commitMicros int64, ackAt time.Time) {
		if commitMicros < measureFrom.Load() {
			return
		}
		d := ackAt.Sub(time.UnixMicro(commitMicros))
		mu.Lock()
		samples = append(samples, d)
		commits = append(commits, commitMicros)
		mu.Unlock()
	}

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	b.mem.begin()
	go func() { done <- daemon.Run(rctx, cfg, log, daemon.Options{Metrics: m, OnAck: onAck}) }()
	stopDaemon := func() error {
		res.mem = b.mem.end()
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Minute):
			return errors.New("tideline did not stop within 2 minutes of cancel")
		}
	}

	// Wait until the replication session is open, so the first
	// transactions do not measure the start-up.
	deadline := time.Now().Add(time.Minute)
	for sumMetric(m.SourceConnected) < 1 {
		if time.Now().After(deadline) {
			res.err = errors.New("tideline did not connect within a minute")
			_ = stopDaemon()
			return res
		}
		select {
		case err := <-done:
			res.err = fmt.Errorf("tideline stopped before streaming: %v", err)
			return res
		case <-time.After(20 * time.Millisecond):
		}
	}

	b.logf("latency: %d single-row tx/s for %s on %d connections (synchronous_commit on), warm-up %s",
		b.o.rate, b.o.duration, b.o.latWorkers, b.o.warmup)
	start := time.Now()
	measureFrom.Store(start.Add(b.o.warmup).UnixMicro())
	committed, err := b.pacedInserts(ctx, m)
	res.genTook = time.Since(start)
	res.committed = committed
	if err != nil {
		res.err = err
		_ = stopDaemon()
		return res
	}
	b.logf("latency: %d transactions committed in %s (%.1f tx/s)", committed, res.genTook.Round(time.Millisecond), res.achieved())

	// Wait for the stragglers' acks.
	waitStart := time.Now()
	res.events, err = waitDrained(m, committed)
	if err != nil {
		res.err = err
	}
	b.logf("latency: last ack %s after the load ended", time.Since(waitStart).Round(time.Millisecond))
	mu.Lock()
	res.samples = slices.Clone(samples)
	if b.o.latencyCSV != "" {
		if err := writeCSV(b.o.latencyCSV, start, commits, samples); err != nil {
			b.logf("latency: %v", err)
		} else {
			b.logf("latency: samples written to %s", b.o.latencyCSV)
		}
	}
	paced := len(samples)
	mu.Unlock()

	// Isolated commits on a quiet database: each transaction is alone in
	// the stream, so its latency is Tideline's hand-off and Kafka's ack,
	// with no following traffic to push a held batch out.
	if res.err == nil {
		res.isolatedN = isolatedCommits
		b.logf("latency: %d isolated transactions, %s apart", isolatedCommits, isolatedGap)
		if err := b.isolatedInserts(ctx, int64(committed)+1); err != nil {
			res.err = err
		} else if _, err := waitDrained(m, committed+isolatedCommits); err != nil {
			res.err = fmt.Errorf("isolated commits: %w", err)
		}
		mu.Lock()
		res.isolated = slices.Clone(samples[paced:])
		mu.Unlock()
		slices.Sort(res.isolated)
		if n := len(res.isolated); n > 0 {
			b.logf("latency: isolated: %d acked batches, p50 %s max %s", n, pct(res.isolated, 0.5), res.isolated[n-1])
		}
	}
	if err := stopDaemon(); err != nil && res.err == nil {
		res.err = fmt.Errorf("daemon.Run on shutdown: %w", err)
	}
	slices.Sort(res.samples)
	b.logf("latency: %d acked batches measured, p50 %s p99 %s max %s", len(res.samples),
		res.pct(0.5), res.pct(0.99), res.pct(1))
	return res
}

const (
	isolatedCommits = 20
	isolatedGap     = 250 * time.Millisecond
)

// waitDrained waits up to a minute until want events were handed over and
// nothing is in flight, and returns the events counted.
func waitDrained(m *observe.Metrics, want int64) (float64, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		ev, infl := sumMetric(m.Events), sumMetric(m.InFlightBytes)
		if ev >= float64(want) && infl == 0 {
			return ev, nil
		}
		if time.Now().After(deadline) {
			return ev, fmt.Errorf("only %.0f of %d events acknowledged after a minute", ev, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isolatedInserts commits isolatedCommits single-row transactions,
// isolatedGap apart, ids from first on.
func (b *bench) isolatedInserts(ctx context.Context, first int64) error {
	c, err := b.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	for i := range int64(isolatedCommits) {
		id := first + i
		if _, err := c.Exec(ctx, `INSERT INTO public.bench_c VALUES ($1::bigint, $2, $3, $4, md5($1::bigint::text), now())`,
			id, fmt.Sprintf("name-%d", id), id%1000, float64(id%100000)/100); err != nil {
			return fmt.Errorf("isolated commits: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(isolatedGap):
		}
	}
	return nil
}

// pacedInserts commits single-row transactions at b.o.rate per second for
// b.o.duration on b.o.latWorkers connections. A dispatcher releases the
// transactions on schedule (catching up after a late tick rather than
// skipping); if the workers fall behind, the achieved rate shows it.
func (b *bench) pacedInserts(ctx context.Context, m *observe.Metrics) (int64, error) {
	interval := time.Second / time.Duration(b.o.rate)
	total := int(b.o.duration / interval)
	jobs := make(chan int64, b.o.rate)
	var committed atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range b.o.latWorkers {
		c, err := b.connect(ctx)
		if err != nil {
			close(jobs)
			_ = g.Wait()
			return 0, err
		}
		g.Go(func() error {
			defer c.Close(context.Background())
			for id := range jobs {
				_, err := c.Exec(gctx, `INSERT INTO public.bench_c VALUES ($1::bigint, $2, $3, $4, md5($1::bigint::text), now())`,
					id, fmt.Sprintf("name-%d", id), id%1000, float64(id%100000)/100)
				if err != nil {
					return fmt.Errorf("latency load: %w", err)
				}
				committed.Add(1)
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start, sent, lastLog := time.Now(), 0, time.Now()
		for sent < total {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
			}
			due := min(total, int(time.Since(start)/interval)+1)
			for ; sent < due; sent++ {
				select {
				case jobs <- int64(sent + 1):
				case <-gctx.Done():
					return nil
				}
			}
			if time.Since(lastLog) > 5*time.Second {
				b.logf("latency: %d/%d transactions committed, %.0f events handed to the publisher", committed.Load(), total, sumMetric(m.Events))
				lastLog = time.Now()
			}
		}
		return nil
	})
	err := g.Wait()
	return committed.Load(), err
}

// writeCSV writes one line per acked batch: its oldest commit (seconds since
// the load started) and its commit -> ack latency in milliseconds.
func writeCSV(path string, start time.Time, commits []int64, samples []time.Duration) error {
	var buf strings.Builder
	buf.WriteString("commit_s,latency_ms\n")
	for i, c := range commits {
		fmt.Fprintf(&buf, "%.6f,%.3f\n", time.UnixMicro(c).Sub(start).Seconds(), float64(samples[i])/1e6)
	}
	if err := os.WriteFile(path, []byte(buf.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
