// Package sinktest is the conformance suite every sink passes: changes are
// produced to an in-process Kafka (kfake) exactly as the capture pipeline
// produces them (envelope, order and shape headers, the schemas topic),
// applied by the real runtime (pkg/apply), and the target is read back.
package sinktest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/kafka"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// Target is a sink under test and a way to read what it wrote.
type Target struct {
	// Open returns a sink writing to the test's target. The suite opens
	// and closes sinks several times on one target; it never reads while
	// a sink is open.
	Open func(t *testing.T) apply.Sink
	// Rows returns every row of the target table that mirrors the source
	// table schema.table, as column name -> text (nil for NULL), the
	// _tideline_ columns included. Integers and text read as their
	// decimal and plain text.
	Rows func(t *testing.T, schema, table string) []map[string]*string
}

// Run runs the suite.
func Run(t *testing.T, tg Target) {
	t.Run("ReplayFromOffsetZeroIsNoOp", func(t *testing.T) { replayFromZero(t, tg) })
	t.Run("PerKeyOrderAcrossBatches", func(t *testing.T) { perKeyOrder(t, tg) })
	t.Run("OlderChangeAfterNewerIsIgnored", func(t *testing.T) { olderAfterNewer(t, tg) })
	t.Run("DeleteAfterUpdateStaysDeleted", func(t *testing.T) { deleteAfterUpdate(t, tg) })
	t.Run("UnchangedToastKeepsValue", func(t *testing.T) { toastMarker(t, tg) })
	t.Run("PoisonRecordsGoToDLQ", func(t *testing.T) { poison(t, tg) })
	t.Run("ColumnAddedAtSource", func(t *testing.T) { columnAdded(t, tg) })
	t.Run("Truncate", func(t *testing.T) { truncate(t, tg) })
}

// harness produces changes for one test.
type harness struct {
	t       *testing.T
	tg      Target
	brokers []string
	prefix  string
	cl      *kgo.Client
	topics  *kafka.Topics
	schemas *kafka.Schemas
	enc     *codec.Encoder
	lsn     uint64
	batch   int
}

func newHarness(t *testing.T, tg Target) *harness {
	k := testenv.NewKafka(t)
	brokers := k.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kafka.Partitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	topics := kafka.NewTopics(cl, config.Topics{Partitions: 3, ReplicationFactor: 1}, nil)
	return &harness{t: t, tg: tg, brokers: brokers, prefix: "suite", cl: cl, topics: topics,
		schemas: kafka.NewSchemas(cl, topics, "suite.schemas"), enc: codec.NewEncoder("test"), lsn: 0x1000, batch: 1000}
}

// table returns a table shape: id int32 key, then the named columns.
func (h *harness) table(name string, cols ...change.Column) *change.Table {
	t := &change.Table{Database: "app", Schema: "public", Name: name, Topic: h.prefix + ".public." + name, HasKey: true,
		Columns: append([]change.Column{{Name: "id", Type: "int4", Logical: change.Int32, Key: true}}, cols...)}
	return t
}

func text(name string) change.Column {
	return change.Column{Name: name, Type: "text", Logical: change.String}
}
func int4(name string) change.Column {
	return change.Column{Name: name, Type: "int4", Logical: change.Int32}
}
func int2(name string) change.Column {
	return change.Column{Name: name, Type: "int2", Logical: change.Int16}
}

// row renders values (by column name; missing ones are NULL, the string
// "~" is the unchanged-TOAST marker) in the table's column order.
func row(t *change.Table, vals map[string]any) []change.Value {
	if vals == nil {
		return nil
	}
	out := make([]change.Value, len(t.Columns))
	for i, c := range t.Columns {
		v, ok := vals[c.Name]
		switch {
		case !ok || v == nil:
		case v == "~":
			out[i] = change.Value{Kind: change.Unavailable}
		default:
			b, _ := json.Marshal(v)
			out[i] = change.Value{Kind: change.Present, JSON: b}
		}
	}
	return out
}

// change is one change to produce.
type chg struct {
	op     change.Op
	t      *change.Table
	before map[string]any
	after  map[string]any
	lsn    uint64 // the commit LSN; produce numbers them in order
}

// produce publishes changes as one transaction each, in order, and waits
// for Kafka's acknowledgement.
func (h *harness) produce(changes ...chg) {
	h.t.Helper()
	for i := range changes {
		h.lsn += 0x100
		changes[i].lsn = h.lsn
	}
	h.produceAt(changes...)
}

// produceAt publishes changes at the commit LSNs they name.
func (h *harness) produceAt(changes ...chg) {
	h.t.Helper()
	ctx := context.Background()
	b := &change.Batch{}
	for _, c := range changes {
		ev := change.Event{Op: c.op, Table: c.t, Before: row(c.t, c.before), After: row(c.t, c.after),
			Source:  change.Source{Connector: "postgresql", Name: h.prefix, TsMs: time.Now().UnixMilli(), TxID: int64(c.lsn), LSN: c.lsn},
			TxOrder: 1, TxTableOrder: 1, TxLSN: c.lsn}
		key := h.enc.Key(&ev)
		b.Add(change.Record{Topic: c.t.Topic, Key: key, Value: h.enc.Value(&ev, time.Now().UnixMilli()), Order: codec.Order(&ev), Table: c.t, Op: c.op})
		if c.op == change.OpDelete {
			b.Add(change.Record{Topic: c.t.Topic, Key: key, Table: c.t, Op: c.op})
		}
	}
	for i := range b.Records {
		r := &b.Records[i]
		if err := h.topics.Ensure(ctx, r.Topic); err != nil {
			h.t.Fatal(err)
		}
		if r.Value != nil {
			id, err := h.schemas.ID(ctx, r.Table)
			if err != nil {
				h.t.Fatal(err)
			}
			r.Schema = id
		}
	}
	h.wait(func(ack func(error)) { kafka.Produce(ctx, h.cl, b, ack) }, len(b.Records))
}

// produceRaw publishes a record as is (a poison message).
func (h *harness) produceRaw(r *kgo.Record) {
	h.t.Helper()
	if err := h.topics.Ensure(context.Background(), r.Topic); err != nil {
		h.t.Fatal(err)
	}
	if err := h.cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) wait(send func(ack func(error)), n int) {
	h.t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	wg.Add(n)
	send(func(err error) {
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}
		wg.Done()
	})
	wg.Wait()
	if first != nil {
		h.t.Fatal(first)
	}
}

// apply runs the sink runtime in consumer group group until it committed
// every record of the change topics, then stops it and closes the sink.
// It returns the metrics the runtime kept.
func (h *harness) apply(group string) *observe.Metrics {
	h.t.Helper()
	m := observe.NewMetrics()
	sink := h.tg.Open(h.t)
	rt := apply.New(apply.Config{Sink: "s", Group: group, TopicPrefix: h.prefix, DLQTopic: h.prefix + ".dlq.s",
		BatchRecords: h.batch, BatchBytes: 16 << 20, Linger: 20 * time.Millisecond},
		sink, apply.Deps{
			Kafka:       []kgo.Opt{kgo.SeedBrokers(h.brokers...), kgo.MetadataMinAge(100 * time.Millisecond), kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelWarn, nil))},
			Shape:       h.schemas.Table,
			EnsureTopic: h.topics.Ensure,
			Metrics:     m,
			Log:         zaptest.NewLogger(h.t, zaptest.Level(zap.WarnLevel)),
		})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	// stop ends the runtime and closes the sink: every way out waits for
	// both, so no goroutine outlives the test.
	stop := func() error {
		cancel()
		err := <-done
		if cerr := sink.Close(); err == nil {
			err = cerr
		}
		return err
	}
	adm := kadm.NewClient(h.cl)
	deadline := time.Now().Add(3 * time.Minute)
	for !h.caughtUp(adm, group) {
		select {
		case err := <-done:
			done <- err
			h.t.Fatalf("runtime stopped: %v (close: %v)", err, stop())
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("group %s did not catch up within 3m (stop: %v)", group, stop())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Caught up, the lag the runtime reports is zero: every partition it
	// owns is committed to its end (a partition it never had records from
	// in this run included).
	for lag := sumGauge(m, "tideline_sink_consumer_lag"); lag != 0; lag = sumGauge(m, "tideline_sink_consumer_lag") {
		if time.Now().After(deadline) {
			h.t.Fatalf("consumer lag %v after catching up (stop: %v)", lag, stop())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		h.t.Fatalf("runtime: %v", err)
	}
	return m
}

// sumGauge sums a gauge family's samples.
func sumGauge(m *observe.Metrics, name string) float64 {
	fams, _ := m.Registry.Gather()
	var n float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, mm := range f.GetMetric() {
				n += mm.GetGauge().GetValue()
			}
		}
	}
	return n
}

// caughtUp reports whether group committed the end of every change topic.
func (h *harness) caughtUp(adm *kadm.Client, group string) bool {
	ctx := context.Background()
	tds, err := adm.ListTopics(ctx)
	if err != nil {
		return false
	}
	var topics []string
	for _, td := range tds {
		if strings.HasPrefix(td.Topic, h.prefix+".public.") {
			topics = append(topics, td.Topic)
		}
	}
	if len(topics) == 0 {
		return false
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return false
	}
	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return false
	}
	ok := true
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset == 0 {
			return
		}
		c, found := committed.Lookup(o.Topic, o.Partition)
		if !found || c.At < o.Offset {
			ok = false
		}
	})
	return ok
}

// rows reads the target table as id -> column -> text.
func (h *harness) rows(table string) map[string]map[string]*string {
	h.t.Helper()
	out := map[string]map[string]*string{}
	for _, r := range h.tg.Rows(h.t, "public", table) {
		id := r["id"]
		if id == nil {
			h.t.Fatalf("%s: a row without id: %v", table, show(r))
		}
		out[*id] = r
	}
	return out
}

func show(r map[string]*string) string {
	keys := make([]string, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := "NULL"
		if r[k] != nil {
			v = *r[k]
		}
		fmt.Fprintf(&b, "%s=%s ", k, v)
	}
	return b.String()
}

func val(r map[string]*string, col string) string {
	if r == nil {
		return "<no row>"
	}
	if v, ok := r[col]; !ok {
		return "<no column>"
	} else if v == nil {
		return "NULL"
	} else {
		return *v
	}
}

// dlq reads the dead-letter topic.
func (h *harness) dlq() []*kgo.Record {
	h.t.Helper()
	topic := h.prefix + ".dlq.s"
	ends, err := kadm.NewClient(h.cl).ListEndOffsets(context.Background(), topic)
	if err != nil {
		h.t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	if n == 0 {
		return nil
	}
	c, err := kgo.NewClient(kgo.SeedBrokers(h.brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	var out []*kgo.Record
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for int64(len(out)) < n {
		fs := c.PollFetches(ctx)
		if ctx.Err() != nil {
			h.t.Fatalf("read %s: got %d of %d records", topic, len(out), n)
		}
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func replayFromZero(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("replay", text("name"), int4("n"))
	var cs []chg
	for i := 1; i <= 300; i++ {
		cs = append(cs, chg{op: change.OpCreate, t: tab, after: map[string]any{"id": i, "name": fmt.Sprintf("n%d", i), "n": i}})
	}
	for i := 1; i <= 300; i += 3 {
		cs = append(cs, chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": i, "name": fmt.Sprintf("u%d", i), "n": -i}})
	}
	for i := 2; i <= 300; i += 5 {
		cs = append(cs, chg{op: change.OpDelete, t: tab, before: map[string]any{"id": i}})
	}
	h.produce(cs...)
	h.batch = 64 // many batches, so replays cross batch boundaries
	h.apply("g1")
	first := h.rows("replay")
	if len(first) != 300-60 {
		t.Fatalf("%d rows after the first pass, want 240", len(first))
	}
	for id, r := range first {
		var i int
		fmt.Sscan(id, &i)
		want := fmt.Sprintf("n%d", i)
		if i%3 == 1 {
			want = fmt.Sprintf("u%d", i)
		}
		if val(r, "name") != want {
			t.Errorf("id %s: name %s, want %s", id, val(r, "name"), want)
		}
	}
	// A new group reads every topic from offset 0.
	h.apply("g2")
	second := h.rows("replay")
	if len(second) != len(first) {
		t.Fatalf("replay changed the row count: %d -> %d", len(first), len(second))
	}
	for id, r := range first {
		if show(r) != show(second[id]) {
			t.Errorf("id %s changed by the replay:\n  %s\n  %s", id, show(r), show(second[id]))
		}
	}
}

func perKeyOrder(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("ordered", int4("n"))
	var cs []chg
	for v := 1; v <= 200; v++ {
		for id := 1; id <= 5; id++ {
			op := change.OpUpdate
			if v == 1 {
				op = change.OpCreate
			}
			cs = append(cs, chg{op: op, t: tab, after: map[string]any{"id": id, "n": v}})
		}
	}
	h.produce(cs...)
	h.batch = 7 // a key's updates spread over many batches
	h.apply("g1")
	rows := h.rows("ordered")
	for id := 1; id <= 5; id++ {
		if got := val(rows[fmt.Sprint(id)], "n"); got != "200" {
			t.Errorf("id %d: n = %s, want 200 (the last update)", id, got)
		}
	}
}

// olderAfterNewer delivers a key's older changes after its newer ones (as a
// replay or a second producer would): the position guard keeps the newer.
func olderAfterNewer(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("guarded", int4("n"))
	h.produceAt(chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 1, "n": 5}, lsn: 0x9000},
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 2, "n": 5}, lsn: 0x9100})
	h.apply("g1")
	// Older than what the target holds: an update of 1, a delete of 2.
	h.produceAt(chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": 1, "n": 1}, lsn: 0x1000},
		chg{op: change.OpDelete, t: tab, before: map[string]any{"id": 2}, lsn: 0x1100})
	h.apply("g1")
	rows := h.rows("guarded")
	if val(rows["1"], "n") != "5" || val(rows["2"], "n") != "5" {
		t.Errorf("older changes overwrote newer ones: id 1 n=%s, id 2 n=%s; want 5 and 5", val(rows["1"], "n"), val(rows["2"], "n"))
	}
}

func deleteAfterUpdate(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("deleted", text("name"))
	h.produce(
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 1, "name": "a"}},
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 2, "name": "b"}},
	)
	h.apply("g1")
	h.produce(
		chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": 1, "name": "a2"}},
		chg{op: change.OpDelete, t: tab, before: map[string]any{"id": 1}},
	)
	h.apply("g1")
	rows := h.rows("deleted")
	if _, ok := rows["1"]; ok || len(rows) != 1 {
		t.Fatalf("after update+delete of 1: rows %v", keys(rows))
	}
	// Replaying everything from the start (the create and update of 1
	// come before its delete) does not bring row 1 back, even in batches
	// that end before the delete.
	h.batch = 1
	h.apply("g2")
	rows = h.rows("deleted")
	if _, ok := rows["1"]; ok || val(rows["2"], "name") != "b" {
		t.Fatalf("after replay: rows %v", keys(rows))
	}
	// A new create of the key after the delete does.
	h.produce(chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 1, "name": "again"}})
	h.apply("g1")
	if got := val(h.rows("deleted")["1"], "name"); got != "again" {
		t.Errorf("re-created row 1: name %s", got)
	}
}

func keys(m map[string]map[string]*string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func toastMarker(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("toasted", text("big"), int4("n"))
	big := strings.Repeat("x", 5000)
	h.produce(chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 1, "big": big, "n": 1}},
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 2, "big": big, "n": 1}})
	h.apply("g1")
	// Row 1: the marker arrives in a later batch; row 2: folded in one.
	h.produce(chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": 1, "big": "~", "n": 2}})
	h.apply("g1")
	h.produce(chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": 2, "big": "short", "n": 2}},
		chg{op: change.OpUpdate, t: tab, after: map[string]any{"id": 2, "big": "~", "n": 3}})
	h.apply("g1")
	rows := h.rows("toasted")
	if got := val(rows["1"], "big"); got != big {
		t.Errorf("row 1: big is %.20s… (%d chars), want the old value kept", got, len(got))
	}
	if val(rows["1"], "n") != "2" {
		t.Errorf("row 1: n = %s, want 2", val(rows["1"], "n"))
	}
	if val(rows["2"], "big") != "short" || val(rows["2"], "n") != "3" {
		t.Errorf("row 2: big %.20s n %s, want short and 3", val(rows["2"], "big"), val(rows["2"], "n"))
	}
}

func poison(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("poisoned", int2("small"), text("name"))
	var cs []chg
	for i := 1; i <= 50; i++ {
		small := i
		if i == 17 {
			small = 70000 // too big for the target's smallint
		}
		cs = append(cs, chg{op: change.OpCreate, t: tab, after: map[string]any{"id": i, "small": small, "name": "ok"}})
	}
	h.produce(cs...)
	h.produceRaw(&kgo.Record{Topic: tab.Topic, Key: []byte(`{"id":99}`), Value: []byte(`this is not JSON`)})
	h.produce(chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 51, "small": 51, "name": "after the poison"}})
	m := h.apply("g1")
	rows := h.rows("poisoned")
	if len(rows) != 50 {
		t.Errorf("%d rows applied, want 50 (all but the poison)", len(rows))
	}
	if _, ok := rows["17"]; ok {
		t.Error("row 17 (smallint overflow) was applied")
	}
	if val(rows["51"], "name") != "after the poison" {
		t.Error("the record after the poison was not applied")
	}
	dead := h.dlq()
	if len(dead) != 2 {
		t.Fatalf("%d records in the DLQ, want 2", len(dead))
	}
	seen := map[string]bool{}
	for _, r := range dead {
		seen[string(r.Key)] = true
		if header(r, apply.HeaderError) == "" || header(r, apply.HeaderTopic) != tab.Topic || header(r, apply.HeaderOffset) == "" || header(r, apply.HeaderSink) != "s" {
			t.Errorf("DLQ record %s lacks its origin headers: %v", r.Key, r.Headers)
		}
	}
	if !seen[`{"id":17}`] || !seen[`{"id":99}`] {
		t.Errorf("DLQ keys %v, want ids 17 and 99", seen)
	}
	if got := testDLQCount(m); got != 2 {
		t.Errorf("tideline_sink_dlq_records_total = %v, want 2", got)
	}
}

func testDLQCount(m *observe.Metrics) float64 {
	fams, _ := m.Registry.Gather()
	var n float64
	for _, f := range fams {
		if f.GetName() == "tideline_sink_dlq_records_total" {
			for _, mm := range f.GetMetric() {
				n += mm.GetCounter().GetValue()
			}
		}
	}
	return n
}

func columnAdded(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	v1 := h.table("evolving", text("a"))
	h.produce(chg{op: change.OpCreate, t: v1, after: map[string]any{"id": 1, "a": "x"}})
	h.apply("g1")
	v2 := h.table("evolving", text("a"), int4("b"))
	h.produce(chg{op: change.OpCreate, t: v2, after: map[string]any{"id": 2, "a": "y", "b": 7}},
		chg{op: change.OpUpdate, t: v2, after: map[string]any{"id": 1, "a": "x", "b": 8}})
	h.apply("g1")
	rows := h.rows("evolving")
	if val(rows["2"], "b") != "7" || val(rows["1"], "b") != "8" {
		t.Errorf("new column b: row 1 %s, row 2 %s; want 8 and 7", val(rows["1"], "b"), val(rows["2"], "b"))
	}
	// The column is dropped at the source: the target keeps it and the
	// values it had; new rows leave it NULL.
	v3 := h.table("evolving", int4("b"))
	h.produce(chg{op: change.OpUpdate, t: v3, after: map[string]any{"id": 1, "b": 9}},
		chg{op: change.OpCreate, t: v3, after: map[string]any{"id": 3, "b": 10}})
	h.apply("g1")
	rows = h.rows("evolving")
	if val(rows["1"], "a") != "x" || val(rows["1"], "b") != "9" || val(rows["3"], "a") != "NULL" {
		t.Errorf("after dropping a: row 1 a=%s b=%s, row 3 a=%s; want x, 9, NULL", val(rows["1"], "a"), val(rows["1"], "b"), val(rows["3"], "a"))
	}
}

func truncate(t *testing.T, tg Target) {
	h := newHarness(t, tg)
	tab := h.table("truncated", text("a"))
	h.produce(chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 1, "a": "x"}},
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 2, "a": "y"}})
	h.apply("g1")
	h.produce(chg{op: change.OpTruncate, t: tab},
		chg{op: change.OpCreate, t: tab, after: map[string]any{"id": 3, "a": "z"}})
	h.apply("g1")
	rows := h.rows("truncated")
	if len(rows) != 1 || val(rows["3"], "a") != "z" {
		t.Fatalf("after the truncate: rows %v, want only 3", keys(rows))
	}
	// Replaying from the start does not bring 1 and 2 back.
	h.batch = 1
	h.apply("g2")
	if rows := h.rows("truncated"); len(rows) != 1 {
		t.Errorf("after replay: rows %v, want only 3", keys(rows))
	}
}
