package main

import (
	"bufio"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// mem tracks this process's memory: peak RSS (VmHWM) and peak Go heap in
// use, over the whole run and per phase. The process holds Tideline, the
// kfake broker (which keeps every record of the phase's topics) and the load
// generators, so a phase's peak is an upper bound for Tideline's.
type mem struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	heapPeak  uint64 // since the phase began
	heapMax   uint64 // whole run
	rssMax    uint64 // whole run, folded in at phase boundaries
	hwmResets bool   // VmHWM can be reset, so phase peaks are per phase
}

// memPeak is one phase's peaks, in bytes.
type memPeak struct {
	rss, heap uint64
	perPhase  bool // false: rss is the process's peak so far
}

// startMem samples the Go heap every 50 ms until stop. It reads
// runtime/metrics, which does not stop the world as ReadMemStats does.
func startMem() *mem {
	m := &mem{done: make(chan struct{})}
	m.wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-m.done:
				return
			case <-t.C:
			}
		}
	})
	return m
}

// heapInUse is HeapInuse: bytes in spans holding objects, free slots
// included. Pages of a span that were never written are not resident, so it
// can exceed RSS.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

func (m *mem) sample() uint64 {
	v := heapInUse()
	m.mu.Lock()
	m.heapPeak = max(m.heapPeak, v)
	m.heapMax = max(m.heapMax, v)
	m.mu.Unlock()
	return v
}

// begin starts a phase: the heap peak and, where the kernel allows
// (/proc/self/clear_refs), the RSS peak start over. It first returns the
// memory earlier phases freed to the OS, so that the phase's RSS peak is its
// own. Call it outside measured windows: it runs a full GC.
func (m *mem) begin() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rssMax = max(m.rssMax, procStatus("VmHWM"))
	debug.FreeOSMemory()
	m.hwmResets = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	m.heapPeak = heapInUse()
}

// end returns the peaks since begin.
func (m *mem) end() memPeak {
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	hwm := procStatus("VmHWM")
	m.rssMax = max(m.rssMax, hwm)
	return memPeak{rss: hwm, heap: m.heapPeak, perPhase: m.hwmResets}
}

// totals returns the whole run's peak RSS and Go heap, and both now.
func (m *mem) totals() (rssPeak, rssNow, heapPeak, heapNow uint64) {
	heapNow = m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rssMax = max(m.rssMax, procStatus("VmHWM"))
	return m.rssMax, procStatus("VmRSS"), m.heapMax, heapNow
}

// stop ends the sampling goroutine and waits for it.
func (m *mem) stop() {
	close(m.done)
	m.wg.Wait()
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
