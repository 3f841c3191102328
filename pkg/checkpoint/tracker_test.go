package checkpoint

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/change"
)

type commits struct {
	mu  sync.Mutex
	got []change.Position
}

func (c *commits) fn(p change.Position) {
	c.mu.Lock()
	c.got = append(c.got, p)
	c.mu.Unlock()
}

func (c *commits) list() []change.Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]change.Position(nil), c.got...)
}

func TestWatermarkWaitsForEarlierBatches(t *testing.T) {
	var c commits
	tr := New(1000, c.fn)
	ctx := context.Background()
	var tks []*Ticket
	for _, cp := range []change.Position{"a", "", "c"} {
		if err := tr.Acquire(ctx, 10); err != nil {
			t.Fatal(err)
		}
		tks = append(tks, tr.Track(10, 2, cp))
	}
	// Complete the last batch first, then the middle one: nothing may be
	// committed while the first is in flight.
	for _, i := range []int{2, 2, 1, 1} {
		tks[i].Ack(nil)
	}
	if got := c.list(); len(got) != 0 {
		t.Fatalf("committed %v while batch 0 is in flight", got)
	}
	if tr.InFlight() != 30 {
		t.Fatalf("in flight %d, want 30", tr.InFlight())
	}
	tks[0].Ack(nil)
	if got := c.list(); len(got) != 0 {
		t.Fatalf("committed %v after half of batch 0", got)
	}
	tks[0].Ack(nil)
	if got := c.list(); len(got) != 1 || got[0] != "c" {
		t.Fatalf("commits %v, want [c] (the newest checkpoint of the delivered prefix)", got)
	}
	if tr.InFlight() != 0 || tr.Pending() != 0 {
		t.Fatalf("in flight %d, pending %d after all acks", tr.InFlight(), tr.Pending())
	}
}

func TestFailureStopsTheWatermark(t *testing.T) {
	var c commits
	tr := New(1000, c.fn)
	ctx := context.Background()
	_ = tr.Acquire(ctx, 1)
	a := tr.Track(1, 1, "a")
	_ = tr.Acquire(ctx, 1)
	b := tr.Track(1, 1, "b")
	boom := errors.New("boom")
	a.Ack(boom)
	b.Ack(nil)
	if got := c.list(); len(got) != 0 {
		t.Fatalf("committed %v past a failed batch", got)
	}
	if !errors.Is(tr.Err(), boom) {
		t.Fatalf("Err() = %v, want boom", tr.Err())
	}
	if err := tr.Acquire(ctx, 1); !errors.Is(err, boom) {
		t.Fatalf("Acquire after failure = %v, want boom", err)
	}
}

func TestAcquireBlocksAtBudget(t *testing.T) {
	tr := New(100, func(change.Position) {})
	ctx := context.Background()
	if err := tr.Acquire(ctx, 80); err != nil {
		t.Fatal(err)
	}
	tk := tr.Track(80, 1, "x")
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := tr.Acquire(tctx, 30); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire over budget = %v, want a deadline error", err)
	}
	if tr.InFlight() != 80 {
		t.Fatalf("a failed Acquire reserved bytes: in flight %d", tr.InFlight())
	}
	got := make(chan error, 1)
	go func() { got <- tr.Acquire(ctx, 30) }()
	select {
	case err := <-got:
		t.Fatalf("Acquire returned %v before bytes were released", err)
	case <-time.After(20 * time.Millisecond):
	}
	tk.Ack(nil)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// A batch larger than the whole budget passes alone.
	tr2 := New(10, func(change.Position) {})
	if err := tr2.Acquire(ctx, 50); err != nil {
		t.Fatalf("oversized batch on an empty tracker: %v", err)
	}
}

func TestConcurrentAcksCommitInOrder(t *testing.T) {
	var c commits
	tr := New(1<<20, c.fn)
	ctx := context.Background()
	const n = 2000
	tks := make([]*Ticket, n)
	for i := range tks {
		_ = tr.Acquire(ctx, 1)
		tks[i] = tr.Track(1, 3, change.Position(rune('A'+i%26))+change.Position(string(rune(i))))
	}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := n - 1 - w; i >= 0; i -= 8 {
				for k := 0; k < 3; k++ {
					tks[i].Ack(nil)
				}
			}
		}(w)
	}
	wg.Wait()
	got := c.list()
	if len(got) == 0 || got[len(got)-1] != tks[n-1].cp {
		t.Fatalf("last commit %v, want %v", got, tks[n-1].cp)
	}
	// Positions must be reported in track order.
	idx := map[change.Position]int{}
	for i, tk := range tks {
		idx[tk.cp] = i
	}
	for i := 1; i < len(got); i++ {
		if idx[got[i]] <= idx[got[i-1]] {
			t.Fatalf("commit %d (%q) is not after commit %d (%q)", i, got[i], i-1, got[i-1])
		}
	}
}
