package apply

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// Config is what the runtime needs to run one sink.
type Config struct {
	// Sink names the sink (metrics, logs, the dead-letter topic).
	Sink string
	// Type is the sink's type, for the status page.
	Type string
	// Group is the Kafka consumer group (tideline-<name>-<sink>).
	Group string
	// InstanceID, when set, makes this member static (KIP-345): a
	// restarted process takes its predecessor's seat at once instead of
	// waiting for the group to notice the old one died. Each running
	// member of a group needs its own.
	InstanceID string
	// TopicPrefix is the pipeline's topic prefix.
	TopicPrefix string
	// Tables are schema.table (db.table) patterns of the captured tables
	// to apply; '*' matches within one part. Empty means all.
	Tables []string
	// DLQTopic receives the records the sink rejects.
	DLQTopic string
	// BatchRecords, BatchBytes and Linger bound a batch: it is applied
	// when it holds BatchRecords records or BatchBytes bytes, or Linger
	// after its first record.
	BatchRecords int
	BatchBytes   int
	Linger       time.Duration
}

// Deps are the runtime's collaborators.
type Deps struct {
	// Client options to reach the brokers (kgo.SeedBrokers, …); the
	// runtime adds its consumer-group options.
	Kafka []kgo.Opt
	// Shape resolves table shape fingerprints.
	Shape ShapeFunc
	// EnsureTopic creates a topic if missing (the dead-letter topic).
	EnsureTopic func(ctx context.Context, topic string) error
	Metrics     *observe.Metrics
	Log         *zap.Logger
}

// Runtime consumes the change topics as a consumer-group member and applies
// them to a Sink.
type Runtime struct {
	cfg  Config
	sink Sink
	d    Deps
	log  *zap.Logger
	// history: the sink is a ChangeLog; batches are not folded. before:
	// deletes keep their whole before image (BeforeImages).
	history, before bool

	batches, retries prometheus.Counter
	applyLat, e2e    prometheus.Observer

	// hw is each partition's high watermark, for the lag gauge; it and
	// tables are used by the applier goroutine only.
	hw     map[string]map[int32]int64
	tables map[string]string // topic -> table label
	// scratch holds the fields of a batch's row images while prepare
	// (the poller goroutine only) folds them; the batches it builds copy
	// the values out, so the next prepare reuses it instead of
	// allocating tens of MiB per batch.
	scratch []field

	// For the status page, written by the runtime's goroutines.
	running      atomic.Bool
	lastBatch    atomic.Int64 // unix nanos of the last committed batch
	failingSince atomic.Int64 // unix nanos of the first failure of the current retry streak, 0 when none
	lastErr      atomic.Pointer[string]
	stopErr      atomic.Pointer[string]
	lag          atomic.Int64
	up           prometheus.Gauge
}

// Info reports the sink's state for the status page: failed when it
// stopped on an error or has been retrying for over 10 s, stalled when
// records wait and nothing was committed for 2 minutes, catching up when
// far behind, running otherwise.
func (r *Runtime) Info() observe.SinkInfo {
	si := observe.SinkInfo{Name: r.cfg.Sink, Type: r.cfg.Type, Group: r.cfg.Group, State: observe.StateRunning}
	last := r.lastBatch.Load()
	if last > 0 {
		si.LastBatchAt = time.Unix(0, last)
	}
	lag := r.lag.Load()
	switch {
	case r.stopErr.Load() != nil:
		si.State, si.Reason = observe.StateFailed, *r.stopErr.Load()
	case r.failingSince.Load() > 0 && time.Since(time.Unix(0, r.failingSince.Load())) > 10*time.Second:
		si.State, si.Reason = observe.StateFailed, "retrying: "+*r.lastErr.Load()
	case lag > 0 && last > 0 && time.Since(si.LastBatchAt) > 2*time.Minute:
		si.State, si.Reason = observe.StateStalled, fmt.Sprintf("%d records waiting, nothing applied for %s", lag, time.Since(si.LastBatchAt).Round(time.Second))
	case lag > int64(10*r.cfg.BatchRecords):
		si.State, si.Reason = observe.StateCatchingUp, fmt.Sprintf("%d records behind", lag)
	case !r.running.Load():
		si.State, si.Reason = observe.StateCatchingUp, "starting"
	}
	return si
}

// failing records a failure of the current retry streak.
func (r *Runtime) failing(err error) {
	msg := err.Error()
	r.lastErr.Store(&msg)
	r.failingSince.CompareAndSwap(0, time.Now().UnixNano())
}

// New returns a runtime for sink.
func New(cfg Config, sink Sink, d Deps) *Runtime {
	_, history := sink.(ChangeLog)
	_, before := sink.(BeforeImages)
	return &Runtime{cfg: cfg, sink: sink, d: d, log: d.Log, history: history, before: before, up: d.Metrics.SinkUp.WithLabelValues(cfg.Sink),
		batches:  d.Metrics.SinkBatches.WithLabelValues(cfg.Sink),
		retries:  d.Metrics.SinkRetries.WithLabelValues(cfg.Sink),
		applyLat: d.Metrics.SinkApply.WithLabelValues(cfg.Sink),
		e2e:      d.Metrics.SinkCommitToApply.WithLabelValues(cfg.Sink),
		hw:       map[string]map[int32]int64{}, tables: map[string]string{},
	}
}

// TopicRegexes returns the regular expressions of the change topics that
// match the table patterns (all change topics when there are none).
func TopicRegexes(prefix string, tables []string) []string {
	if len(tables) == 0 {
		tables = []string{"*.*"}
	}
	var out []string
	for _, t := range tables {
		db, tab, _ := strings.Cut(t, ".")
		part := func(p string) string {
			return strings.ReplaceAll(regexp.QuoteMeta(p), `\*`, `[^.]*`)
		}
		out = append(out, "^"+regexp.QuoteMeta(prefix)+`\.`+part(db)+`\.`+part(tab)+"$")
	}
	return out
}

// Run consumes and applies until ctx is done or a fatal error. Offsets are
// committed only after the records up to them were applied (or sent to the
// dead-letter topic); a crash at any point replays from the last commit,
// which the sink's position guard makes harmless.
func (r *Runtime) Run(ctx context.Context) error {
	prefix := regexp.QuoteMeta(r.cfg.TopicPrefix)
	opts := append([]kgo.Opt{}, r.d.Kafka...)
	opts = append(opts,
		kgo.ConsumerGroup(r.cfg.Group),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(TopicRegexes(r.cfg.TopicPrefix, r.cfg.Tables)...),
		// The pipeline's own topics share the prefix.
		kgo.ConsumeExcludeTopics("^"+prefix+`\.(offsets|schemas)$`, "^"+prefix+`\.dlq\..*$`),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		// No rebalance between a poll and the commit of what it
		// returned: a partition is only revoked once everything polled
		// from it is applied and committed. (A member whose batch takes
		// longer than the rebalance timeout — a target down for long — is
		// evicted meanwhile and its commit is refused: the new owner
		// applies those records again, which the position guard makes
		// harmless.)
		kgo.BlockRebalanceOnPoll(),
		// A batch gathers several fetches when it is bigger than one
		// (and the client refuses a fetch over its 100 MiB read limit).
		kgo.FetchMaxBytes(int32(min(max(r.cfg.BatchBytes, 1<<20), 64<<20))),
		// A broker holds an empty fetch this long; short, so a poll that
		// gave up (the linger passed) is not followed by a stale wait.
		kgo.FetchMaxWait(time.Second),
		// A killed member's partitions move after this long, and a
		// rebalance waits at most this long for members to rejoin (a
		// restarted sink waits that long for its predecessor's seat).
		// The poller allows rebalances at least every few seconds, so a
		// live member always rejoins in time.
		kgo.SessionTimeout(10*time.Second), kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(20*time.Second),
		// New tables make new topics: look for them often.
		kgo.MetadataMinAge(time.Second), kgo.MetadataMaxAge(10*time.Second),
	)
	if r.cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(r.cfg.InstanceID))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("sink %s: kafka client: %w", r.cfg.Sink, err)
	}
	// With BlockRebalanceOnPoll, leaving the group waits for
	// AllowRebalance: allow it, then leave and close.
	defer cl.CloseAllowingRebalance()
	if err := r.d.EnsureTopic(ctx, r.cfg.DLQTopic); err != nil {
		return fmt.Errorf("sink %s: dead-letter topic: %w", r.cfg.Sink, err)
	}
	r.log.Info("sink started", zap.String("group", r.cfg.Group), zap.Strings("tables", r.cfg.Tables), zap.String("dlq", r.cfg.DLQTopic))

	// Two stages: the poller reads and decodes batch N+1 while the
	// applier writes batch N (decoding is CPU in this process, applying
	// mostly waits on the target). At most one prepared batch waits.
	//
	// Rebalances: BlockRebalanceOnPoll holds them off from a poll until
	// AllowRebalance. The poller allows them only when the applier has
	// committed everything polled (idle), so a partition is never revoked
	// while its records are unapplied or uncommitted; under steady load it
	// pauses to get there at least every allowEvery.
	const allowEvery = 2 * time.Second
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan *prepared, 1)
	var pending atomic.Int64
	finished := make(chan struct{}, 1)
	idle := func() error {
		for pending.Load() > 0 {
			select {
			case <-finished:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	}
	g.Go(func() error {
		defer close(work)
		lastAllow := time.Now()
		for {
			if time.Since(lastAllow) >= allowEvery {
				if err := idle(); err != nil {
					return err
				}
				cl.AllowRebalance()
				lastAllow = time.Now()
			}
			recs, hw, err := r.poll(gctx, cl)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				if err := idle(); err != nil {
					return err
				}
				cl.AllowRebalance()
				lastAllow = time.Now()
				continue
			}
			w, err := r.prepare(gctx, recs)
			if err != nil {
				return err
			}
			w.hw = hw
			pending.Add(1)
			select {
			case work <- w:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	g.Go(func() error {
		for w := range work {
			if err := r.handle(gctx, cl, w); err != nil {
				return err // not committed: replayed by the next owner
			}
			if err := r.commit(gctx, cl, w.recs); err != nil {
				return err
			}
			r.batches.Inc()
			r.lastBatch.Store(time.Now().UnixNano())
			r.failingSince.Store(0)
			for topic, parts := range w.hw {
				for p, v := range parts {
					r.mark(r.hw, topic, p, v)
				}
			}
			r.updateLag(cl.CommittedOffsets())
			pending.Add(-1)
			select {
			case finished <- struct{}{}:
			default:
			}
		}
		return nil
	})
	r.running.Store(true)
	r.up.Set(1)
	err = g.Wait()
	r.running.Store(false)
	r.up.Set(0)
	if ctx.Err() != nil {
		return nil // stopped: what was not committed is replayed on the next start
	}
	if err != nil {
		msg := err.Error()
		r.stopErr.Store(&msg)
	}
	return err
}

// poll gathers one batch: it waits for a first record, then keeps polling
// until the batch is full or Linger has passed since that first record.
func (r *Runtime) poll(ctx context.Context, cl *kgo.Client) ([]*kgo.Record, map[string]map[int32]int64, error) {
	var recs []*kgo.Record
	hw := map[string]map[int32]int64{}
	size := 0
	var deadline time.Time
	for {
		// Until the first record, wake now and then so that rebalances
		// are allowed; after it, stop at the linger's deadline.
		wake := deadline
		if wake.IsZero() {
			wake = time.Now().Add(time.Second)
		}
		pctx, cancel := context.WithDeadline(ctx, wake)
		fs := cl.PollRecords(pctx, r.cfg.BatchRecords-len(recs))
		cancel()
		if fs.IsClientClosed() || ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		var fenced error
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, kerr.FencedInstanceID) {
				fenced = err
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				r.log.Warn("fetch failed; retrying", zap.String("topic", topic), zap.Int32("partition", p), zap.Error(err))
			}
		})
		if fenced != nil {
			return nil, nil, fmt.Errorf("sink %s: another member of group %s uses the instance id %q (%w): give each instance its own (tideline run --instance)",
				r.cfg.Sink, r.cfg.Group, r.cfg.InstanceID, fenced)
		}
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			if p.HighWatermark > 0 {
				r.mark(hw, p.Topic, p.Partition, p.HighWatermark)
			}
		})
		n := len(recs)
		fs.EachRecord(func(rec *kgo.Record) {
			recs = append(recs, rec)
			size += len(rec.Key) + len(rec.Value)
		})
		if len(recs) > 0 && deadline.IsZero() {
			deadline = time.Now().Add(r.cfg.Linger)
		}
		if len(recs) == 0 {
			return nil, hw, nil
		}
		if len(recs) >= r.cfg.BatchRecords || size >= r.cfg.BatchBytes || !time.Now().Before(deadline) || len(recs) == n {
			return recs, hw, nil
		}
	}
}

func (r *Runtime) mark(m map[string]map[int32]int64, topic string, p int32, v int64) {
	pm := m[topic]
	if pm == nil {
		pm = map[int32]int64{}
		m[topic] = pm
	}
	pm[p] = v
}

// updateLag sets the lag gauges from the high watermarks seen and the
// group's committed offsets of the partitions this member owns (a
// partition it no longer owns is forgotten).
func (r *Runtime) updateLag(committed map[string]map[int32]kgo.EpochOffset) {
	var total int64
	for topic, parts := range r.hw {
		var lag int64
		for p, hw := range parts {
			c, ok := committed[topic][p]
			if !ok {
				delete(parts, p)
				continue
			}
			lag += max(hw-max(c.Offset, 0), 0)
		}
		total += lag
		if label, ok := r.tables[topic]; ok {
			r.d.Metrics.SinkLag.WithLabelValues(r.cfg.Sink, label).Set(float64(lag))
		}
	}
	r.lag.Store(total)
}

// rejected is a record bound for the dead-letter topic.
type rejected struct {
	rec *kgo.Record
	err error
}

// prepared is a polled batch, decoded and folded per topic.
type prepared struct {
	recs    []*kgo.Record
	topics  []string
	folders map[string]*folder
	dead    []rejected // records that could not be read
	hw      map[string]map[int32]int64
}

// prepare decodes and folds a polled batch.
func (r *Runtime) prepare(ctx context.Context, recs []*kgo.Record) (*prepared, error) {
	w := &prepared{recs: recs, folders: map[string]*folder{}}
	scratch := r.scratch[:0]
	defer func() {
		// Let go of this batch's records (the fields point into them).
		clear(scratch)
		r.scratch = scratch[:0]
	}()
	// Each topic's record count sizes its folder's map: growing a map of
	// a batch's keys step by step cost more than filling it.
	counts := map[string]int{}
	for _, rec := range recs {
		counts[rec.Topic]++
	}
	var ev event
	for _, rec := range recs {
		ok, next, err := r.decodeRetrying(ctx, rec, scratch, &ev)
		scratch = next
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			w.dead = append(w.dead, rejected{rec, err})
			continue
		}
		if !ok {
			continue // a tombstone: the delete before it did the work
		}
		f := w.folders[rec.Topic]
		if f == nil {
			f = newFolder(rec.Topic, r.history, r.before, counts[rec.Topic])
			w.folders[rec.Topic] = f
			w.topics = append(w.topics, rec.Topic)
		}
		f.add(&ev)
	}
	for _, t := range w.topics {
		f := w.folders[t]
		f.tb = f.batch()
	}
	return w, nil
}

// handle applies a prepared batch, topic by topic; the records a sink
// rejects are written to the dead-letter topic before it returns.
func (r *Runtime) handle(ctx context.Context, cl *kgo.Client, w *prepared) error {
	dead := w.dead
	for _, topic := range w.topics {
		f := w.folders[topic]
		tb := f.tb
		label := tb.Table.Label()
		r.tables[topic] = label
		start := time.Now()
		rej, err := r.applyTable(ctx, tb)
		if err != nil {
			return err
		}
		r.applyLat.Observe(time.Since(start).Seconds())
		if f.minTs > 0 {
			r.e2e.Observe(float64(time.Now().UnixMilli()-f.minTs) / 1000)
		}
		dropped := map[*kgo.Record]bool{}
		for _, x := range rej {
			dropped[x.rec] = true
		}
		counts := map[change.Op]int{}
		for i := range tb.Rows {
			if !dropped[tb.Rows[i].Records[0]] {
				counts[tb.Rows[i].Op]++
			}
		}
		for op, n := range counts {
			r.d.Metrics.SinkRows.WithLabelValues(r.cfg.Sink, label, op.String()).Add(float64(n))
		}
		if tb.Truncate != nil {
			r.d.Metrics.SinkRows.WithLabelValues(r.cfg.Sink, label, change.OpTruncate.String()).Inc()
		}
		dead = append(dead, rej...)
	}
	if len(dead) > 0 {
		return r.deadLetter(ctx, cl, dead)
	}
	return nil
}

// decodeRetrying decodes rec; a shape it cannot read yet (the schemas
// topic unreachable) is retried, a record it cannot read at all is
// returned as an error for the dead-letter topic.
func (r *Runtime) decodeRetrying(ctx context.Context, rec *kgo.Record, scratch []field, ev *event) (bool, []field, error) {
	var ok bool
	out := scratch
	err := r.retry(ctx, "reading a table shape", []zap.Field{zap.String("topic", rec.Topic)}, func() error {
		var err error
		ok, out, err = decode(ctx, rec, r.d.Shape, scratch, ev)
		return err
	}, func(err error) bool { return errors.Is(err, errPoison) || errors.Is(err, change.ErrUnknownShape) })
	return ok, out, err
}

// retry runs op until it succeeds, returns an error final says to stop
// at, or ctx is done. Every other failure is counted, marks the sink
// failing, is logged, and is retried with exponential backoff, without
// limit (a daemon waits for its target to come back).
func (r *Runtime) retry(ctx context.Context, what string, fields []zap.Field, op func() error, final func(error) bool) error {
	var bo *backoff.ExponentialBackOff
	for {
		err := op()
		if err == nil || (final != nil && final(err)) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if bo == nil {
			bo = newBackoff()
		}
		r.retries.Inc()
		r.failing(err)
		wait := bo.NextBackOff()
		r.log.Warn(what+" failed; retrying", append(fields, zap.Error(err), zap.Duration("retry_in", wait))...)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

func newBackoff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 30 * time.Second
	return bo
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// applyTable applies tb, retrying transient failures without limit and
// isolating the rows a permanent failure is about; it returns the records
// of the rows the sink rejected.
func (r *Runtime) applyTable(ctx context.Context, tb *TableBatch) ([]rejected, error) {
	var out []rejected
	for len(tb.Rows) > 0 || tb.Truncate != nil {
		err := r.retry(ctx, "apply", []zap.Field{zap.String("topic", tb.Topic), zap.Int("rows", len(tb.Rows))},
			func() error { return r.sink.Apply(ctx, tb) }, IsPermanent)
		var rowErr *RowError
		var rowErrs RowErrors
		var all *RejectError
		switch {
		case err == nil:
			return out, nil
		case !IsPermanent(err):
			return nil, err // ctx done
		case errors.As(err, &rowErrs) && validRows(rowErrs, len(tb.Rows)):
			bad := make(map[int]bool, len(rowErrs))
			for _, re := range rowErrs {
				if !bad[re.Index] {
					bad[re.Index] = true
					out = append(out, rejectRow(tb.Rows[re.Index], re)...)
				}
			}
			rest := *tb
			rest.Rows = make([]Row, 0, len(tb.Rows)-len(bad))
			for i, row := range tb.Rows {
				if !bad[i] {
					rest.Rows = append(rest.Rows, row)
				}
			}
			tb = &rest
		case errors.As(err, &all):
			for _, row := range tb.Rows {
				out = append(out, rejectRow(row, err)...)
			}
			return out, nil
		case errors.As(err, &rowErr) && rowErr.Index >= 0 && rowErr.Index < len(tb.Rows):
			out = append(out, rejectRow(tb.Rows[rowErr.Index], err)...)
			rest := *tb
			rest.Rows = append(append([]Row(nil), tb.Rows[:rowErr.Index]...), tb.Rows[rowErr.Index+1:]...)
			tb = &rest
		case len(tb.Rows) == 0:
			return nil, fmt.Errorf("sink %s: truncate of %s: %w", r.cfg.Sink, tb.Topic, err)
		case len(tb.Rows) == 1:
			out = append(out, rejectRow(tb.Rows[0], err)...)
			rest := *tb
			rest.Rows = nil
			tb = &rest
		default:
			// Split to find the rows at fault; the halves are applied in
			// turn (the truncate with the first).
			half := len(tb.Rows) / 2
			a, b := *tb, *tb
			a.Rows, b.Rows, b.Truncate = tb.Rows[:half], tb.Rows[half:], nil
			ra, err := r.applyTable(ctx, &a)
			if err != nil {
				return nil, err
			}
			rb, err := r.applyTable(ctx, &b)
			if err != nil {
				return nil, err
			}
			return append(append(out, ra...), rb...), nil
		}
	}
	return out, nil
}

// validRows reports whether every index of errs is a row of a batch of n.
func validRows(errs RowErrors, n int) bool {
	for _, e := range errs {
		if e == nil || e.Index < 0 || e.Index >= n {
			return false
		}
	}
	return len(errs) > 0
}

func rejectRow(row Row, err error) []rejected {
	out := make([]rejected, 0, len(row.Records))
	for _, rec := range row.Records {
		out = append(out, rejected{rec, err})
	}
	return out
}

// Dead-letter headers: the original record's headers come first.
const (
	HeaderError     = "tideline.error"
	HeaderTopic     = "tideline.error.topic"
	HeaderPartition = "tideline.error.partition"
	HeaderOffset    = "tideline.error.offset"
	HeaderSink      = "tideline.error.sink"
)

// maxErrorHeader bounds the error text a dead-letter record carries, so
// the header cannot make the record too large to write.
const maxErrorHeader = 4096

// deadLetter writes the rejected records to the dead-letter topic and
// waits for Kafka's acknowledgement, retrying transient failures without
// limit: their offsets are committed only once they are there. An error
// Kafka says is final (a record too large) stops the sink: nothing is
// skipped silently.
func (r *Runtime) deadLetter(ctx context.Context, cl *kgo.Client, dead []rejected) error {
	recs := make([]*kgo.Record, 0, len(dead))
	for _, d := range dead {
		msg := d.err.Error()
		if len(msg) > maxErrorHeader {
			msg = msg[:maxErrorHeader]
		}
		h := append([]kgo.RecordHeader(nil), d.rec.Headers...)
		h = append(h,
			kgo.RecordHeader{Key: HeaderError, Value: []byte(msg)},
			kgo.RecordHeader{Key: HeaderTopic, Value: []byte(d.rec.Topic)},
			kgo.RecordHeader{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(d.rec.Partition)))},
			kgo.RecordHeader{Key: HeaderOffset, Value: []byte(strconv.FormatInt(d.rec.Offset, 10))},
			kgo.RecordHeader{Key: HeaderSink, Value: []byte(r.cfg.Sink)},
		)
		recs = append(recs, &kgo.Record{Topic: r.cfg.DLQTopic, Key: d.rec.Key, Value: d.rec.Value, Headers: h})
	}
	err := r.retry(ctx, "writing to the dead-letter topic", []zap.Field{zap.String("topic", r.cfg.DLQTopic)},
		func() error { return cl.ProduceSync(ctx, recs...).FirstErr() },
		func(err error) bool {
			var ke *kerr.Error
			return errors.As(err, &ke) && !ke.Retriable
		})
	if err != nil {
		return fmt.Errorf("sink %s: write to the dead-letter topic %s: %w", r.cfg.Sink, r.cfg.DLQTopic, err)
	}
	for _, d := range dead {
		label, ok := r.tables[d.rec.Topic]
		if !ok {
			label = strings.TrimPrefix(d.rec.Topic, r.cfg.TopicPrefix+".")
		}
		r.d.Metrics.SinkDLQ.WithLabelValues(r.cfg.Sink, label).Inc()
		r.log.Warn("record sent to the dead-letter topic", zap.String("topic", d.rec.Topic),
			zap.Int32("partition", d.rec.Partition), zap.Int64("offset", d.rec.Offset), zap.Error(d.err))
	}
	return nil
}

// commit commits the offsets after recs, retrying transient failures. A
// commit the group refuses (this member was evicted or fenced during a
// rebalance) is not retried: the partitions' new owner applies those
// records again, harmlessly.
func (r *Runtime) commit(ctx context.Context, cl *kgo.Client, recs []*kgo.Record) error {
	err := r.retry(ctx, "offset commit", nil, func() error { return cl.CommitRecords(ctx, recs...) }, groupRefused)
	if groupRefused(err) {
		r.log.Warn("offset commit refused after a rebalance; the partitions' new owner applies these records again", zap.Error(err))
		return nil
	}
	return err
}

// groupRefused reports a commit refused because this member no longer
// belongs to the group's current generation.
func groupRefused(err error) bool {
	return errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.UnknownMemberID) ||
		errors.Is(err, kerr.RebalanceInProgress) || errors.Is(err, kerr.FencedInstanceID)
}
