package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// report is everything the run prints on stdout.
type report struct {
	facts     facts
	big       throughput
	bigBinary measure
	single    throughput
	latency   latency

	heapPeak, heapEnd uint64 // Go heap in use, bytes
	vmHWM, vmRSS      uint64 // bytes
	took              time.Duration
}

func (r *report) print(w io.Writer, o options) {
	f := r.facts
	fmt.Fprintf(w, "\n## Tideline benchmark\n\n")
	fmt.Fprintf(w, "Measured %s by `go run ./cmd/tideline-bench` (`make bench`) in one run, side by side.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- Machine: %d CPUs (%s), GOMAXPROCS %d, %s\n", f.cpus, f.cpuModel, f.gomaxprocs, f.goVersion)
	fmt.Fprintf(w, "- PostgreSQL: %s (fsync off, throwaway cluster); %s\n", f.pgVersion, f.recv)
	fmt.Fprintf(w, "- Kafka: in-process kfake broker in the same process as Tideline (acks=all, lz4): it shares the %d CPUs and the Go heap with Tideline. pg_recvlogical writes to /dev/null.\n", f.cpus)
	fmt.Fprintf(w, "- Each workload's readers use slots created at the same WAL position before the load; pg_recvlogical is timed to --endpos, Tideline until Kafka acknowledged every event.\n\n")

	fmt.Fprintf(w, "| Workload | pg_recvlogical changes/s | Tideline changes/s | Ratio | Target | Met |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---|---|\n")
	for _, t := range []throughput{r.big, r.single} {
		if t.label == "" {
			continue
		}
		if t.err != nil {
			fmt.Fprintf(w, "| %s | error | error | - | >= %.1fx | - |\n", t.label, t.target)
			continue
		}
		rr, tr := t.recv.rate(t.events), t.tl.rate(t.events)
		ratio, met := "-", "-"
		if rr > 0 && tr > 0 {
			ratio = fmt.Sprintf("%.2fx", tr/rr)
			met = yesNo(tr/rr >= t.target)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | >= %.1fx | %s |\n", t.label, rateCell(t.recv, t.events), rateCell(t.tl, t.events), ratio, t.target, met)
	}
	if !o.skipLat {
		l := r.latency
		fmt.Fprintf(w, "\n| Latency (commit -> Kafka ack) | Samples | Achieved tx/s | p50 | p99 | max | Target | Met |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---|---|\n")
		label := fmt.Sprintf("single-row tx, %d connections, %s after %s warm-up", l.workers, o.duration-o.warmup, o.warmup)
		target := fmt.Sprintf("p99 <= 25 ms at %s tx/s", thousands(l.rate))
		if l.err != nil || len(l.samples) == 0 {
			fmt.Fprintf(w, "| %s | error | %.0f | - | - | - | %s | - |\n", label, l.achieved(), target)
		} else {
			fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s | %s | %s |\n", label, thousands(len(l.samples)), l.achieved(),
				ms(l.pct(0.5)), ms(l.pct(0.99)), ms(l.pct(1)), target,
				yesNo(l.pct(0.99) <= 25*time.Millisecond && l.achieved() >= 0.95*float64(l.rate)))
		}
	}

	if r.big.label != "" && r.big.err == nil {
		fmt.Fprintf(w, "\nFor the record (pg_recvlogical only, workload A, proto_version 1): text %s changes/s, binary=true %s changes/s",
			rateCell(r.big.recv, r.big.events), rateCell(r.bigBinary, r.big.events))
		if a, bb := r.big.recv.rate(r.big.events), r.bigBinary.rate(r.big.events); a > 0 && bb > 0 {
			fmt.Fprintf(w, " (binary/text %.2fx)", bb/a)
		}
		fmt.Fprintln(w, ".")
	}

	fmt.Fprintf(w, "\nDetails:\n\n")
	for _, t := range []throughput{r.big, r.single} {
		if t.label == "" {
			continue
		}
		if t.err != nil {
			fmt.Fprintf(w, "- %s: %v\n", t.label, t.err)
			continue
		}
		fmt.Fprintf(w, "- %s: load generated in %s (%.1f MiB of WAL); pg_recvlogical %s; Tideline %s\n",
			t.label, t.genTook.Round(time.Millisecond), float64(t.walBytes)/(1<<20), took(t.recv), took(t.tl))
	}
	if r.big.label != "" && r.big.err == nil {
		fmt.Fprintf(w, "- A, pg_recvlogical binary=true: %s\n", took(r.bigBinary))
	}
	if !o.skipLat {
		l := r.latency
		if l.err != nil {
			fmt.Fprintf(w, "- Latency: %v\n", l.err)
		}
		fmt.Fprintf(w, "- Latency: %d transactions committed in %s (%.1f tx/s asked %d); %.0f events acked in %s batches measured after warm-up; a batch's latency is its oldest transaction's\n",
			l.committed, l.genTook.Round(time.Millisecond), l.achieved(), l.rate, l.events, thousands(len(l.samples)))
	}
	fmt.Fprintf(w, "- Memory of this process (Tideline + kfake holding the topics + load generators): peak RSS (VmHWM) %.0f MiB, RSS at end %.0f MiB; Go heap in use peak %.0f MiB, at end %.0f MiB\n",
		mib(r.vmHWM), mib(r.vmRSS), mib(r.heapPeak), mib(r.heapEnd))
	fmt.Fprintf(w, "- Whole run: %s\n", r.took.Round(time.Second))
}

func rateCell(m measure, events int) string {
	if m.err != nil {
		return "error"
	}
	return thousands(int(m.rate(events) + 0.5))
}

func took(m measure) string {
	if m.err != nil {
		return "error: " + m.err.Error()
	}
	s := m.took.Round(time.Millisecond).String()
	if m.note != "" {
		s += " (" + m.note + ")"
	}
	return s
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// thousands formats n with comma separators.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// procStatus returns a kB field of /proc/self/status in bytes (0 if absent).
func procStatus(key string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n << 10
	}
	return 0
}

// heapSampler tracks the Go heap in use (runtime/metrics: no stop-the-world,
// unlike ReadMemStats) every 50 ms.
type heapSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	peak uint64
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{done: make(chan struct{})}
	h.wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			h.sample()
			select {
			case <-h.done:
				return
			case <-t.C:
			}
		}
	})
	return h
}

// heapInUse is HeapInuse: bytes in spans holding objects, free slots included.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

func (h *heapSampler) sample() uint64 {
	v := heapInUse()
	h.mu.Lock()
	h.peak = max(h.peak, v)
	h.mu.Unlock()
	return v
}

func (h *heapSampler) peakAndNow() (peak, now uint64) {
	now = h.sample()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak, now
}

// stop ends the sampling goroutine and waits for it.
func (h *heapSampler) stop() {
	close(h.done)
	h.wg.Wait()
}
