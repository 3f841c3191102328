// Package checkpoint turns out-of-order delivery acknowledgements into an
// in-order watermark, and bounds the bytes in flight.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("checkpoint tracker closed")

// CommitFunc is told the newest position whose batch, and every batch before
// it, is delivered. It is called from whichever goroutine completed the last
// ticket (a producer callback), never concurrently with itself, and with
// positions in the order their batches were tracked.
type CommitFunc func(change.Position)

// Tracker follows batches from hand-off to delivery.
//
// The publishing goroutine calls Acquire, then Track, in log order. Tickets
// complete in any order, from any goroutine. The tracker calls CommitFunc
// with the checkpoint of the newest batch of the contiguous delivered
// prefix: a checkpoint never moves past a batch that is still in flight or
// that failed.
type Tracker struct {
	budget int64
	commit CommitFunc

	mu       sync.Mutex
	inflight int64
	queue    []*Ticket // tracked, in order; a prefix may be done
	err      error     // first delivery failure; the watermark stops there
	closed   bool
	wake     chan struct{} // closed and replaced when bytes are released

	committing sync.Mutex // serialises CommitFunc calls

	inflightGauge atomic.Int64
}

// New returns a tracker that lets at most budget bytes be in flight (a
// single batch larger than the budget is let through alone) and reports
// delivered checkpoints to commit.
func New(budget int64, commit CommitFunc) *Tracker {
	if budget <= 0 {
		panic("checkpoint: budget must be positive")
	}
	return &Tracker{budget: budget, commit: commit, wake: make(chan struct{})}
}

// Ticket is one tracked batch. Its owner calls Ack once per record.
type Ticket struct {
	t         *Tracker
	bytes     int64
	remaining atomic.Int64
	cp        change.Position
	done      bool // guarded by t.mu
	err       error
}

// Acquire blocks until n more bytes fit in the budget, ctx is done, or the
// tracker is closed. Nothing is reserved when it returns an error, so a
// caller whose ctx expired may do other work and call it again. A request
// larger than the whole budget waits until nothing is in flight.
func (t *Tracker) Acquire(ctx context.Context, n int) error {
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return ErrClosed
		}
		if t.err != nil {
			err := t.err
			t.mu.Unlock()
			return err
		}
		if t.inflight == 0 || t.inflight+int64(n) <= t.budget {
			t.inflight += int64(n)
			t.inflightGauge.Store(t.inflight)
			t.mu.Unlock()
			return nil
		}
		wake := t.wake
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Track registers a batch of bytes (already acquired) holding records
// records, whose delivery lets checkpoint cp be committed (cp may be empty).
// It must be called in log order, from one goroutine at a time. A batch with
// no records is complete at once.
func (t *Tracker) Track(bytes, records int, cp change.Position) *Ticket {
	tk := &Ticket{t: t, bytes: int64(bytes), cp: cp}
	tk.remaining.Store(int64(records))
	t.mu.Lock()
	t.queue = append(t.queue, tk)
	t.mu.Unlock()
	if records == 0 {
		t.complete(tk, nil)
	}
	return tk
}

// Ack records the delivery (err == nil) or failure of one record of the
// ticket's batch. It is safe from any goroutine; the last Ack completes it.
func (tk *Ticket) Ack(err error) {
	if err != nil {
		tk.t.complete(tk, err)
		return
	}
	if tk.remaining.Add(-1) == 0 {
		tk.t.complete(tk, nil)
	}
}

func (t *Tracker) complete(tk *Ticket, err error) {
	t.mu.Lock()
	if tk.done {
		t.mu.Unlock()
		return
	}
	if err != nil {
		// A failed batch stays at its place in the queue: the watermark
		// never passes it. Its bytes stay reserved until the pipeline stops.
		if t.err == nil {
			t.err = fmt.Errorf("delivery failed: %w", err)
		}
		t.signalLocked()
		t.mu.Unlock()
		return
	}
	tk.done = true
	var (
		cp       change.Position
		released int64
		n        int
	)
	for n < len(t.queue) && t.queue[n].done {
		released += t.queue[n].bytes
		if t.queue[n].cp != "" {
			cp = t.queue[n].cp
		}
		n++
	}
	if n > 0 {
		clear(t.queue[:n])
		t.queue = t.queue[n:]
		t.inflight -= released
		t.inflightGauge.Store(t.inflight)
		t.signalLocked()
	}
	// Take the commit lock before dropping mu: two completions racing
	// here must report their checkpoints in queue order, and the one that
	// popped the earlier prefix holds mu first, so it also gets here first.
	if cp != "" {
		t.committing.Lock()
	}
	t.mu.Unlock()
	if cp != "" {
		t.commit(cp)
		t.committing.Unlock()
	}
}

// signalLocked wakes every waiting Acquire. t.mu must be held.
func (t *Tracker) signalLocked() {
	close(t.wake)
	t.wake = make(chan struct{})
}

// Err returns the first delivery failure, if any.
func (t *Tracker) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// InFlight returns the bytes acquired and not yet released.
func (t *Tracker) InFlight() int64 { return t.inflightGauge.Load() }

// Pending returns how many tracked batches are not yet released.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

// Close wakes every Acquire with ErrClosed. It is idempotent.
func (t *Tracker) Close() {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		t.signalLocked()
	}
	t.mu.Unlock()
}

// Store keeps small pieces of source state (snapshot progress, binlog
// positions) durably, by key. Sources call it from their Run goroutine.
type Store interface {
	// Load returns the last value saved under key, or nil if none.
	Load(ctx context.Context, key string) ([]byte, error)
	// Save stores value under key; it returns once the value is durable.
	Save(ctx context.Context, key string, value []byte) error
}
