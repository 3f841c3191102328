package observe

import (
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// Recent keeps the last warnings and errors logged, for the status page:
// a zap core to tee beside the real one. Log lines are already free of
// secrets (DSNs are redacted where they are logged), so it shows them as
// they are.
type Recent struct {
	mu      sync.Mutex
	entries []ErrorEntry // ring, oldest first once full
	next    int
	full    bool
	size    int
}

// NewRecent keeps the last size entries.
func NewRecent(size int) *Recent {
	return &Recent{entries: make([]ErrorEntry, size), size: size}
}

// Entries returns the kept entries, newest first.
func (r *Recent) Entries() []ErrorEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = r.size
	}
	out := make([]ErrorEntry, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.entries[(r.next-i+r.size)%r.size])
	}
	return out
}

func (r *Recent) add(e ErrorEntry) {
	r.mu.Lock()
	r.entries[r.next] = e
	r.next = (r.next + 1) % r.size
	if r.next == 0 {
		r.full = true
	}
	r.mu.Unlock()
}

// Core returns a zap core that records entries at Warn and above.
func (r *Recent) Core() zapcore.Core { return &recentCore{r: r} }

type recentCore struct {
	r      *Recent
	fields []zapcore.Field
}

func (c *recentCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *recentCore) With(fs []zapcore.Field) zapcore.Core {
	return &recentCore{r: c.r, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *recentCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *recentCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	ent := ErrorEntry{Time: e.Time.UTC(), Level: e.Level.String(), Component: e.LoggerName, Message: e.Message}
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fs...) {
		switch {
		case f.Type == zapcore.ErrorType:
			if err, ok := f.Interface.(error); ok {
				ent.Error = err.Error()
			}
		case f.Key == "sink" && f.Type == zapcore.StringType:
			ent.Component += " " + f.String
		}
	}
	if ent.Time.IsZero() {
		ent.Time = time.Now().UTC()
	}
	c.r.add(ent)
	return nil
}

func (c *recentCore) Sync() error { return nil }
