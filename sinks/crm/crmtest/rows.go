package crmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Customers is the tests' source table, public.customers: id (int64,
// key), email, name, phone (string), born (date), signed_up
// (timestamptz), score (float64), vip (bool).
func Customers() *change.Table {
	return &change.Table{Schema: "public", Name: "customers", Topic: "app.public.customers", HasKey: true, Columns: []change.Column{
		{Name: "id", Type: "int8", Logical: change.Int64, Key: true},
		{Name: "email", Type: "text", Logical: change.String},
		{Name: "name", Type: "text", Logical: change.String},
		{Name: "phone", Type: "text", Logical: change.String},
		{Name: "born", Type: "date", Logical: change.Date},
		{Name: "signed_up", Type: "timestamptz", Logical: change.TimestampTZ},
		{Name: "score", Type: "float8", Logical: change.Float64},
		{Name: "vip", Type: "bool", Logical: change.Bool},
	}}
}

// Row builds a change of t as the runtime hands it to a sink: values
// (Go values, rendered as JSON; json.RawMessage as is) aligned with the
// columns, a column not in vals absent; the key from the key columns; a
// delete carries only the key columns. order is its position.
func Row(t *change.Table, op change.Op, order int, vals map[string]any) apply.Row {
	row := apply.Row{Op: op, Order: fmt.Appendf(nil, "%020d", order), Values: make([]json.RawMessage, len(t.Columns))}
	key := map[string]json.RawMessage{}
	for i, c := range t.Columns {
		v, ok := vals[c.Name]
		if !ok || (op == change.OpDelete && !c.Key) {
			continue
		}
		raw, ok := v.(json.RawMessage)
		if !ok {
			raw, _ = json.Marshal(v)
		}
		row.Values[i] = raw
		if c.Key {
			key[c.Name] = raw
		}
	}
	row.Key, _ = json.Marshal(key)
	return row
}

// Batch is a table batch of t's rows.
func Batch(t *change.Table, rows ...apply.Row) *apply.TableBatch {
	return &apply.TableBatch{Table: t, Topic: t.Topic, Rows: rows}
}

// Drive applies tb to sink as the apply runtime does (pkg/apply's
// applyTable): a *apply.RowError rejects that row and applies the rest
// again; apply.Reject rejects every row; apply.Permanent splits the batch
// in halves; a plain error is retried, here at most attempts times (the
// runtime retries without limit). It returns the rejected rows by key, and
// the last plain error when the attempts ran out.
func Drive(ctx context.Context, sink apply.Sink, tb *apply.TableBatch, attempts int) (map[string]error, error) {
	rejected := map[string]error{}
	err := drive(ctx, sink, tb, attempts, rejected)
	return rejected, err
}

func drive(ctx context.Context, sink apply.Sink, tb *apply.TableBatch, attempts int, rejected map[string]error) error {
	tries := 0
	for len(tb.Rows) > 0 {
		err := sink.Apply(ctx, tb)
		var rowErr *apply.RowError
		var rowErrs apply.RowErrors
		var all *apply.RejectError
		switch {
		case err == nil:
			return nil
		case !apply.IsPermanent(err):
			if tries++; tries >= attempts {
				return err
			}
		case errors.As(err, &all):
			for _, r := range tb.Rows {
				rejected[string(r.Key)] = err
			}
			return nil
		case errors.As(err, &rowErrs) && len(rowErrs) > 0:
			bad := map[int]bool{}
			for _, re := range rowErrs {
				bad[re.Index] = true
				rejected[string(tb.Rows[re.Index].Key)] = re.Err
			}
			rest := *tb
			rest.Rows = nil
			for i, r := range tb.Rows {
				if !bad[i] {
					rest.Rows = append(rest.Rows, r)
				}
			}
			tb = &rest
		case errors.As(err, &rowErr) && rowErr.Index >= 0 && rowErr.Index < len(tb.Rows):
			rejected[string(tb.Rows[rowErr.Index].Key)] = rowErr.Err
			rest := *tb
			rest.Rows = append(append([]apply.Row(nil), tb.Rows[:rowErr.Index]...), tb.Rows[rowErr.Index+1:]...)
			tb = &rest
		case len(tb.Rows) == 1:
			rejected[string(tb.Rows[0].Key)] = err
			return nil
		default:
			half := len(tb.Rows) / 2
			a, b := *tb, *tb
			a.Rows, b.Rows = tb.Rows[:half], tb.Rows[half:]
			if err := drive(ctx, sink, &a, attempts, rejected); err != nil {
				return err
			}
			return drive(ctx, sink, &b, attempts, rejected)
		}
	}
	return nil
}
