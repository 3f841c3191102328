package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/checkpoint"
	"github.com/tideline-cdc/tideline/pkg/kafka"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// Pipeline connects a Source to Kafka through a checkpoint Tracker.
type Pipeline struct {
	name    string
	src     Source
	cl      *kgo.Client
	topics  *kafka.Topics
	schemas *kafka.Schemas
	tracker *checkpoint.Tracker
	m       *observe.Metrics
	log     *zap.Logger
	onAck   func(commitMicros int64, ackAt time.Time)

	// produceCtx is never cancelled: records handed to the client must be
	// delivered even while the pipeline shuts down (Drain waits for them).
	produceCtx context.Context

	events   map[*change.Table]*[len(opIndex)]prometheus.Counter
	lastTab  *change.Table
	lastCnts *[len(opIndex)]prometheus.Counter
	inflight prometheus.Gauge
	pubLat   prometheus.Observer
	c2a      prometheus.Observer

	ready      atomic.Bool
	lastCommit atomic.Int64                    // unix nanos of the last checkpoint move
	lastPos    atomic.Pointer[change.Position] // nil until a checkpoint moved
	source     string
	prefix     string // the topic prefix: <prefix>.dlq.* belongs to the sinks
	lagSeconds prometheus.Gauge
	lagMicros  atomic.Int64 // what lagSeconds shows, for Info
	// shapeIDs caches the schemas' fingerprints by table; Handle runs on
	// the source goroutine only, so it needs no lock.
	shapeIDs map[*change.Table][]byte
	mu       sync.Mutex
	lastE    error
}

var opIndex = [...]change.Op{change.OpCreate, change.OpUpdate, change.OpDelete, change.OpRead, change.OpTruncate}

// Option configures a Pipeline.
type Option func(*Pipeline)

// WithAckHook calls fn for every delivered batch that carried a source
// commit time (benchmarks measure commit-to-ack latency with it). fn runs on
// a producer goroutine and must be quick.
func WithAckHook(fn func(commitMicros int64, ackAt time.Time)) Option {
	return func(p *Pipeline) { p.onAck = fn }
}

// New returns a pipeline named name that reads src and produces with cl,
// creating topics with topics and publishing table shapes to schemas,
// never holding more than budget bytes in flight.
func New(name string, src Source, cl *kgo.Client, topics *kafka.Topics, schemas *kafka.Schemas, budget int64, m *observe.Metrics, log *zap.Logger, opts ...Option) *Pipeline {
	p := &Pipeline{
		name:       name,
		src:        src,
		cl:         cl,
		topics:     topics,
		schemas:    schemas,
		m:          m,
		log:        log,
		produceCtx: context.Background(),
		events:     map[*change.Table]*[len(opIndex)]prometheus.Counter{},
		shapeIDs:   map[*change.Table][]byte{},
		inflight:   m.InFlightBytes.WithLabelValues(name),
		pubLat:     m.PublishLatency.WithLabelValues(name),
		c2a:        m.CommitToAck.WithLabelValues(name),
	}
	for _, o := range opts {
		o(p)
	}
	p.lastCommit.Store(time.Now().UnixNano())
	cpTime := m.CheckpointTime.WithLabelValues(name)
	p.lagSeconds = m.SourceLagSeconds.WithLabelValues(name)
	m.InFlightBudget.WithLabelValues(name).Set(float64(budget))
	p.tracker = checkpoint.New(budget, func(pos change.Position) {
		p.lastCommit.Store(time.Now().UnixNano())
		p.lastPos.Store(&pos)
		cpTime.SetToCurrentTime()
		src.Commit(pos)
	})
	return p
}

// WithSourceType names the source kind in the status (postgres, mysql).
func WithSourceType(t string) Option { return func(p *Pipeline) { p.source = t } }

// WithTopicPrefix tells the pipeline its topic prefix: a captured table
// whose topic would be one of the sinks' dead-letter topics
// (<prefix>.dlq.<sink>) stops it with an error instead of mixing the two.
func WithTopicPrefix(prefix string) Option { return func(p *Pipeline) { p.prefix = prefix } }

// StallAfter is how long batches may wait for Kafka without the checkpoint
// moving before the pipeline is not ready (stalled).
const StallAfter = 2 * time.Minute

// What Ready reports, to test with errors.Is.
var (
	ErrStarting   = errors.New("source starting (snapshot or connecting)")
	ErrNotRunning = errors.New("source not running")
	ErrStalled    = errors.New("stalled")
)

// Info reports the pipeline's state for the status page: failed while the
// source cannot run (it is retried), catching up during the snapshot or
// when far behind, stalled when batches wait for Kafka without the
// checkpoint moving, running otherwise.
func (p *Pipeline) Info() *observe.PipelineInfo {
	pi := &observe.PipelineInfo{Name: p.name, Source: p.source, State: observe.StateRunning}
	if pos := p.lastPos.Load(); pos != nil {
		pi.Checkpoint = string(*pos)
		pi.CheckpointAt = time.Unix(0, p.lastCommit.Load())
	}
	err := p.Ready(StallAfter)
	lag := float64(p.lagMicros.Load()) / 1e6
	switch {
	case err == nil && lag > 30:
		pi.State, pi.Reason = observe.StateCatchingUp, fmt.Sprintf("%.0f s behind the source", lag)
	case err == nil:
	case errors.Is(err, ErrStalled):
		pi.State, pi.Reason = observe.StateStalled, err.Error()
	case errors.Is(err, ErrStarting):
		pi.State, pi.Reason = observe.StateCatchingUp, "initial snapshot or connecting"
	case p.LastError() != nil:
		pi.State, pi.Reason = observe.StateFailed, err.Error()+"; retrying"
	default:
		pi.State, pi.Reason = observe.StateCatchingUp, "starting"
	}
	return pi
}

// Tracker returns the pipeline's checkpoint tracker (for status and tests).
func (p *Pipeline) Tracker() *checkpoint.Tracker { return p.tracker }

// Ready returns nil while the source runs and checkpoints move: it
// reports a stall when batches have been in flight for longer than stall
// without any checkpoint moving.
func (p *Pipeline) Ready(stall time.Duration) error {
	if st, ok := p.src.(interface{ Streaming() bool }); ok && p.ready.Load() && !st.Streaming() {
		return ErrStarting
	}
	if !p.ready.Load() {
		if err := p.LastError(); err != nil {
			return fmt.Errorf("%w: %w", ErrNotRunning, err)
		}
		return ErrNotRunning
	}
	if since := time.Since(time.Unix(0, p.lastCommit.Load())); p.tracker.Pending() > 0 && since > stall {
		return fmt.Errorf("%w: no checkpoint delivered for %s with %d batches in flight", ErrStalled, since.Round(time.Second), p.tracker.Pending())
	}
	return nil
}

// LastError returns the last error the pipeline recovered from, if any.
func (p *Pipeline) LastError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastE
}

// Handle implements Handler.
func (p *Pipeline) Handle(ctx context.Context, b *change.Batch) error {
	if err := p.tracker.Err(); err != nil {
		return err
	}
	if len(b.Records) > 0 {
		if err := p.ensureTopics(ctx, b); err != nil {
			return err
		}
		if err := p.stampSchemas(ctx, b); err != nil {
			return err
		}
	}
	if err := p.tracker.Acquire(ctx, b.Bytes); err != nil {
		return err
	}
	p.inflight.Set(float64(p.tracker.InFlight()))
	tk := p.tracker.Track(b.Bytes, len(b.Records), b.Checkpoint)
	if len(b.Records) == 0 {
		return nil
	}
	p.count(b)
	start := time.Now()
	commitMicros := b.CommitMicros
	remaining := atomic.Int64{}
	remaining.Store(int64(len(b.Records)))
	kafka.Produce(p.produceCtx, p.cl, b, func(err error) {
		tk.Ack(err)
		if remaining.Add(-1) != 0 || err != nil {
			return
		}
		now := time.Now()
		p.pubLat.Observe(now.Sub(start).Seconds())
		if p.tracker.Pending() == 0 {
			p.lagMicros.Store(0) // caught up: nothing in flight
		} else if commitMicros > 0 {
			p.lagMicros.Store(now.UnixMicro() - commitMicros)
		}
		p.lagSeconds.Set(float64(p.lagMicros.Load()) / 1e6)
		if commitMicros > 0 {
			p.c2a.Observe(float64(now.UnixMicro()-commitMicros) / 1e6)
			if p.onAck != nil {
				p.onAck(commitMicros, now)
			}
		}
		p.inflight.Set(float64(p.tracker.InFlight()))
	})
	return nil
}

func (p *Pipeline) ensureTopics(ctx context.Context, b *change.Batch) error {
	var last string
	for i := range b.Records {
		if t := b.Records[i].Topic; t != last {
			if p.prefix != "" && strings.HasPrefix(t, p.prefix+".dlq.") {
				return Fatal(fmt.Errorf("table %s would publish to %s, a name the sinks' dead-letter topics use (<prefix>.dlq.<sink>): "+
					"leave the schema or database named dlq out of source.tables, or change kafka.topic_prefix", b.Records[i].Table.Label(), t))
			}
			if err := p.topics.Ensure(ctx, t); err != nil {
				return err
			}
			last = t
		}
	}
	return nil
}

// stampSchemas sets each record's shape fingerprint, publishing shapes not
// published yet (and waiting for their ack) before any record naming them
// is produced.
func (p *Pipeline) stampSchemas(ctx context.Context, b *change.Batch) error {
	for i := range b.Records {
		r := &b.Records[i]
		if r.Table == nil || r.Value == nil {
			continue
		}
		id, ok := p.shapeIDs[r.Table]
		if !ok {
			var err error
			if id, err = p.schemas.ID(ctx, r.Table); err != nil {
				return err
			}
			if len(p.shapeIDs) >= 4096 {
				clear(p.shapeIDs) // every schema change makes a new *Table
			}
			p.shapeIDs[r.Table] = id
		}
		r.Schema = id
	}
	return nil
}

// count adds the batch's events to the per-table counters. Handle runs on
// the source goroutine only, so the cache needs no lock.
func (p *Pipeline) count(b *change.Batch) {
	for i := range b.Records {
		r := &b.Records[i]
		if r.Table == nil || r.Value == nil {
			continue // tombstones are not events
		}
		if r.Table != p.lastTab {
			c, ok := p.events[r.Table]
			if !ok {
				if len(p.events) >= 4096 {
					clear(p.events) // every schema change makes a new *Table
				}
				c = new([len(opIndex)]prometheus.Counter)
				tname := r.Table.Label()
				for j, op := range opIndex {
					c[j] = p.m.Events.WithLabelValues(p.name, tname, op.String())
				}
				p.events[r.Table] = c
			}
			p.lastTab, p.lastCnts = r.Table, c
		}
		for j, op := range opIndex {
			if op == r.Op {
				p.lastCnts[j].Inc()
				break
			}
		}
	}
}

// Drain implements Handler: it waits for every produced record's ack.
func (p *Pipeline) Drain(ctx context.Context) error {
	if err := p.cl.Flush(ctx); err != nil {
		return fmt.Errorf("drain: waiting for Kafka acks: %w", err)
	}
	return p.tracker.Err()
}

// Run runs the source until ctx is done or a fatal error. A source error
// that is not fatal (a lost connection) is logged, the in-flight records are
// drained, and the source restarts from its last committed position with
// exponential backoff, without limit. A delivery failure stops the
// pipeline: nothing after the failed batch is ever committed.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.tracker.Close()
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 30 * time.Second
	connected := p.m.SourceConnected.WithLabelValues(p.name)
	for {
		p.ready.Store(true)
		started := time.Now()
		err := p.src.Run(ctx, p)
		p.ready.Store(false)
		connected.Set(0)
		if err == nil || ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return p.tracker.Err()
		}
		if terr := p.tracker.Err(); terr != nil {
			return terr
		}
		if errors.Is(err, ErrFatal) {
			return err
		}
		p.m.Errors.WithLabelValues(p.name, "source").Inc()
		p.mu.Lock()
		p.lastE = err
		p.mu.Unlock()
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		p.log.Error("source stopped; restarting from the last committed position", zap.Error(err), zap.Duration("retry_in", wait))
		// Deliver what is in flight first, so the restarted source's
		// duplicates are limited to the window it re-reads.
		if derr := p.Drain(ctx); derr != nil {
			if ctx.Err() == nil {
				return derr
			}
			// Stopped while draining: finish the drain, bounded, so a
			// clean stop still delivers what was handed over.
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			derr = p.Drain(dctx)
			cancel()
			return derr
		}
		select {
		case <-ctx.Done():
			return p.tracker.Err()
		case <-time.After(wait):
		}
	}
}
