package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// ShapeFunc returns the table shape with a fingerprint (kafka.Schemas.Table).
// Its error wraps change.ErrUnknownShape when no such shape exists (the
// record goes to the dead-letter topic); any other error is retried.
type ShapeFunc func(ctx context.Context, id []byte) (*change.Table, error)

// event is a decoded change record.
type event struct {
	op     change.Op
	shape  *change.Table
	key    []byte
	order  []byte
	tsMs   int64
	txID   []byte
	fields []field // after image, or before for a delete
	rec    *kgo.Record
}

// errPoison marks a record the runtime cannot read at all.
var errPoison = errors.New("not a Tideline change record")

// decode reads one record into ev, appending its row image's fields to
// scratch (shared by a batch's events, so they cost no allocation each).
// A tombstone (nil value) returns false.
func decode(ctx context.Context, r *kgo.Record, shape ShapeFunc, scratch []field, ev *event) (bool, []field, error) {
	if r.Value == nil {
		return false, scratch, nil
	}
	var order, id []byte
	for _, h := range r.Headers {
		switch h.Key {
		case codec.OrderHeader:
			order = h.Value
		case codec.SchemaHeader:
			id = h.Value
		}
	}
	if len(order) == 0 || len(id) == 0 {
		return false, scratch, fmt.Errorf("%w: no %s/%s header", errPoison, codec.OrderHeader, codec.SchemaHeader)
	}
	env, scratch, err := parseEnvelope(r.Value, scratch)
	if err != nil {
		return false, scratch, fmt.Errorf("%w: value is not a JSON envelope: %v", errPoison, err)
	}
	t, err := shape(ctx, id)
	if err != nil {
		return false, scratch, err
	}
	*ev = event{shape: t, key: r.Key, order: order, tsMs: env.tsMs, txID: env.txID, rec: r}
	has := false
	switch env.op {
	case "c", "u", "r":
		ev.op, ev.fields, has = change.Op(env.op[0]), env.after, env.hasA
	case "d":
		ev.op, ev.fields, has = change.OpDelete, env.before, env.hasB
	case "t":
		ev.op = change.OpTruncate
		return true, scratch, nil
	default:
		return false, scratch, fmt.Errorf("%w: op %q", errPoison, env.op)
	}
	if !has {
		return false, scratch, fmt.Errorf("%w: op %q without its row image", errPoison, env.op)
	}
	if t.HasKey && len(ev.key) == 0 {
		return false, scratch, fmt.Errorf("%w: a change of keyed table %s without a record key", errPoison, t.Topic)
	}
	return true, scratch, nil
}

// folder folds one topic's events per key, in log order; for a change-log
// sink (history) it keeps every event as its own row instead.
type folder struct {
	topic   string
	history bool
	// before keeps a delete's whole before image (BeforeImages).
	before   bool
	shapes   []*change.Table // every shape seen, oldest first
	rows     map[string]*folded
	order    []*folded // first-seen order
	truncate []byte
	minTs    int64
	// tb is the batch built from the folded rows, once folding is done.
	tb *TableBatch
	// slab is where folded rows are allocated, a chunk at a time.
	slab []folded
}

type folded struct {
	op      change.Op
	key     []byte
	order   []byte
	tsMs    int64
	txID    []byte
	shape   *change.Table // of the newest change, to tell when fields line up
	fields  []field
	records []*kgo.Record
	// first backs records while it holds one record, as most rows do.
	first [1]*kgo.Record
}

// newFolder returns a folder for a topic of which about hint records are
// expected (sizing its map; with history, which keeps every change, no
// row goes through the map).
func newFolder(topic string, history, before bool, hint int) *folder {
	if history {
		hint = 0
	}
	return &folder{topic: topic, history: history, before: before || history, rows: make(map[string]*folded, hint)}
}

// row returns a new folded row for ev, from the slab: a batch's rows are
// allocated a chunk at a time rather than one by one, and live as long as
// the batch does.
func (f *folder) row(ev *event) *folded {
	if len(f.slab) == cap(f.slab) {
		f.slab = make([]folded, 0, min(max(2*cap(f.slab), 64), 4096))
	}
	f.slab = append(f.slab, folded{op: ev.op, key: ev.key, order: ev.order, tsMs: ev.tsMs, txID: ev.txID, shape: ev.shape, fields: ev.fields})
	r := &f.slab[len(f.slab)-1]
	r.first[0] = ev.rec
	r.records = r.first[:]
	return r
}

func (f *folder) add(ev *event) {
	if len(f.shapes) == 0 || f.shapes[len(f.shapes)-1] != ev.shape {
		f.shapes = append(f.shapes, ev.shape)
	}
	if ev.tsMs > 0 && (f.minTs == 0 || ev.tsMs < f.minTs) {
		f.minTs = ev.tsMs
	}
	if f.history {
		// Every change stands alone, the truncates too, in log order.
		f.order = append(f.order, f.row(ev))
		return
	}
	if ev.op == change.OpTruncate {
		// The truncate removes every row older than it, so older changes
		// need not be written. Partitions are read independently, so
		// "older" is by Order, not by arrival.
		if f.truncate == nil || bytes.Compare(ev.order, f.truncate) > 0 {
			f.truncate = ev.order
		}
		kept := f.order[:0]
		for _, r := range f.order {
			if bytes.Compare(r.order, f.truncate) < 0 {
				delete(f.rows, string(r.key)) // a moot change: never written
				continue
			}
			kept = append(kept, r)
		}
		clear(f.order[len(kept):])
		f.order = kept
		return
	}
	if f.truncate != nil && bytes.Compare(ev.order, f.truncate) < 0 {
		return // older than a truncate in this batch: moot
	}
	if len(ev.key) == 0 {
		// No key: nothing to fold on; each change stands alone.
		r := f.row(ev)
		r.key = nil
		f.order = append(f.order, r)
		return
	}
	old, ok := f.rows[string(ev.key)] // no allocation for the lookup
	if !ok {
		r := f.row(ev)
		f.rows[string(ev.key)] = r
		f.order = append(f.order, r)
		return
	}
	fields := ev.fields
	if ev.op != change.OpDelete && old.op != change.OpDelete && (ev.shape != old.shape || hasUnavailable(ev.fields)) {
		// A column the newer change does not carry (an unchanged TOASTed
		// value, or a column its shape lacks) still has the value the
		// older change gave it. Changes of one shape that carry every
		// value need no merge.
		carried := make(map[string]int, len(ev.fields))
		for i, f := range ev.fields {
			carried[string(f.name)] = i
		}
		fields = append([]field(nil), ev.fields...)
		for _, f := range old.fields {
			if IsUnavailable(f.raw) {
				continue
			}
			i, ok := carried[string(f.name)]
			switch {
			case !ok:
				fields = append(fields, f)
			case IsUnavailable(fields[i].raw):
				fields[i] = f
			}
		}
	}
	old.op, old.order, old.tsMs, old.txID, old.shape, old.fields = ev.op, ev.order, ev.tsMs, ev.txID, ev.shape, fields
	old.records = append(old.records, ev.rec)
}

func hasUnavailable(fs []field) bool {
	for _, f := range fs {
		if IsUnavailable(f.raw) {
			return true
		}
	}
	return false
}

// IsUnavailable reports whether v is Debezium's marker for a value the
// source did not send (an unchanged TOASTed value): sinks keep what they
// have.
func IsUnavailable(v json.RawMessage) bool {
	return bytes.Equal(v, unavailable)
}

var unavailable = []byte(`"` + change.UnavailableMarker + `"`)

// batch builds the TableBatch: columns are the newest shape's, then those
// only older shapes had; values are aligned with them.
func (f *folder) batch() *TableBatch {
	newest := f.shapes[len(f.shapes)-1]
	cols := append([]change.Column(nil), newest.Columns...)
	seen := map[string]bool{}
	for _, c := range cols {
		seen[c.Name] = true
	}
	for i := len(f.shapes) - 2; i >= 0; i-- {
		for _, c := range f.shapes[i].Columns {
			if !seen[c.Name] {
				seen[c.Name] = true
				c.Key = false
				cols = append(cols, c)
			}
		}
	}
	t := *newest
	t.Columns = cols
	index := make(map[string]int, len(cols))
	for i, c := range cols {
		index[c.Name] = i
	}
	tb := &TableBatch{Table: &t, Topic: f.topic, Truncate: f.truncate, Rows: make([]Row, 0, len(f.order))}
	values := make([]json.RawMessage, len(cols)*len(f.order))
	for n, r := range f.order {
		row := Row{Op: r.op, Key: r.key, Order: r.order, TsMs: r.tsMs, TxID: r.txID, Values: values[n*len(cols) : (n+1)*len(cols) : (n+1)*len(cols)], Records: r.records}
		for k, fl := range r.fields {
			// The fields of the newest shape's changes come in its
			// column order: try the field's place before the map.
			i, ok := k, k < len(cols) && cols[k].Name == string(fl.name)
			if !ok {
				i, ok = index[string(fl.name)]
			}
			if !ok || (r.op == change.OpDelete && !cols[i].Key && !f.before) {
				continue // a delete only needs to find the row
			}
			row.Values[i] = fl.raw
		}
		tb.Rows = append(tb.Rows, row)
	}
	return tb
}
