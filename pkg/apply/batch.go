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
type ShapeFunc func(ctx context.Context, id []byte) (*change.Table, error)

// event is a decoded change record.
type event struct {
	op     change.Op
	shape  *change.Table
	key    []byte
	order  []byte
	tsMs   int64
	values map[string]json.RawMessage // after image, or before for a delete
	rec    *kgo.Record
}

// envelope is the part of the JSON value a sink reads.
type envelope struct {
	Before map[string]json.RawMessage `json:"before"`
	After  map[string]json.RawMessage `json:"after"`
	Source struct {
		TsMs int64 `json:"ts_ms"`
	} `json:"source"`
	Op string `json:"op"`
}

// errPoison marks a record the runtime cannot read at all.
var errPoison = errors.New("not a Tideline change record")

// decode reads one record. A tombstone (nil value) returns (nil, nil).
func decode(ctx context.Context, r *kgo.Record, shape ShapeFunc) (*event, error) {
	if r.Value == nil {
		return nil, nil
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
		return nil, fmt.Errorf("%w: no %s/%s header", errPoison, codec.OrderHeader, codec.SchemaHeader)
	}
	var env envelope
	if err := json.Unmarshal(r.Value, &env); err != nil {
		return nil, fmt.Errorf("%w: value is not a JSON envelope: %v", errPoison, err)
	}
	t, err := shape(ctx, id)
	if err != nil {
		return nil, err
	}
	ev := &event{shape: t, key: r.Key, order: order, tsMs: env.Source.TsMs, rec: r}
	switch env.Op {
	case "c", "u", "r":
		ev.op, ev.values = change.Op(env.Op[0]), env.After
	case "d":
		ev.op, ev.values = change.OpDelete, env.Before
	case "t":
		ev.op = change.OpTruncate
		return ev, nil
	default:
		return nil, fmt.Errorf("%w: op %q", errPoison, env.Op)
	}
	if ev.values == nil {
		return nil, fmt.Errorf("%w: op %q without its row image", errPoison, env.Op)
	}
	if t.HasKey && len(ev.key) == 0 {
		return nil, fmt.Errorf("%w: a change of keyed table %s without a record key", errPoison, t.Topic)
	}
	return ev, nil
}

// folder folds one topic's events per key, in log order.
type folder struct {
	topic    string
	shapes   []*change.Table // every shape seen, oldest first
	rows     map[string]*folded
	order    []*folded // first-seen order
	truncate []byte
	// dropped holds the records a truncate made moot.
	dropped []*kgo.Record
	// keyless counts rows of tables without a key (they cannot be folded).
	keyless int
	minTs   int64
}

type folded struct {
	mapKey  string
	op      change.Op
	key     []byte
	order   []byte
	shape   *change.Table
	values  map[string]json.RawMessage
	records []*kgo.Record
}

func newFolder(topic string) *folder {
	return &folder{topic: topic, rows: map[string]*folded{}}
}

func (f *folder) add(ev *event) {
	if len(f.shapes) == 0 || f.shapes[len(f.shapes)-1] != ev.shape {
		f.shapes = append(f.shapes, ev.shape)
	}
	if ev.tsMs > 0 && (f.minTs == 0 || ev.tsMs < f.minTs) {
		f.minTs = ev.tsMs
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
				f.dropped = append(f.dropped, r.records...)
				delete(f.rows, r.mapKey)
				continue
			}
			kept = append(kept, r)
		}
		clear(f.order[len(kept):])
		f.order = kept
		f.dropped = append(f.dropped, ev.rec)
		return
	}
	if f.truncate != nil && bytes.Compare(ev.order, f.truncate) < 0 {
		f.dropped = append(f.dropped, ev.rec)
		return
	}
	k := string(ev.key)
	if len(ev.key) == 0 {
		// No key: nothing to fold on; each change stands alone.
		k = fmt.Sprintf("\x00%d/%d", ev.rec.Partition, ev.rec.Offset)
		f.keyless++
	}
	old, ok := f.rows[k]
	if !ok {
		r := &folded{mapKey: k, op: ev.op, key: ev.key, order: ev.order, shape: ev.shape, values: ev.values, records: []*kgo.Record{ev.rec}}
		f.rows[k] = r
		f.order = append(f.order, r)
		return
	}
	if ev.op != change.OpDelete && old.op != change.OpDelete {
		// A column the newer change does not carry (an unchanged TOASTed
		// value) still has the value the older change gave it.
		for name, v := range old.values {
			if nv, ok := ev.values[name]; (!ok || isMarker(nv)) && !isMarker(v) {
				ev.values[name] = v
			}
		}
	}
	old.op, old.order, old.shape, old.values = ev.op, ev.order, ev.shape, ev.values
	old.records = append(old.records, ev.rec)
}

func isMarker(v json.RawMessage) bool {
	return bytes.Equal(v, []byte(`"`+change.UnavailableMarker+`"`))
}

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
	tb := &TableBatch{Table: &t, Topic: f.topic, Truncate: f.truncate, Rows: make([]Row, 0, len(f.order))}
	for _, r := range f.order {
		row := Row{Op: r.op, Key: r.key, Order: r.order, Values: make([]json.RawMessage, len(cols)), Records: r.records}
		for i, c := range cols {
			if r.op == change.OpDelete && !c.Key {
				continue // a delete only needs to find the row
			}
			if v, ok := r.values[c.Name]; ok {
				row.Values[i] = v
			}
		}
		tb.Rows = append(tb.Rows, row)
	}
	return tb
}
