// Package codec turns change events into Kafka records: the key is the row's
// key columns as a JSON object, the value a Debezium-compatible JSON envelope
// without the schema wrapper (docs/envelope.md).
package codec

import (
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Encoder encodes events. It keeps scratch buffers and a per-table cache of
// encoded column names, so it is not safe for concurrent use: each source
// goroutine owns one.
type Encoder struct {
	version string
	buf     []byte
	tables  map[*change.Table]*tableNames
}

type tableNames struct {
	// cols[i] is `"name":` for column i, JSON-escaped once.
	cols [][]byte
	// source is the constant part of the source block for this table:
	// `"db":…,"schema":…,"table":…`.
	source []byte
}

// maxCachedTables bounds the name cache: every schema change makes a new
// *change.Table, so a long-lived process would otherwise keep old shapes.
const maxCachedTables = 4096

// NewEncoder returns an Encoder that stamps source.version with version.
func NewEncoder(version string) *Encoder {
	return &Encoder{version: version, buf: make([]byte, 0, 4096), tables: map[*change.Table]*tableNames{}}
}

func (e *Encoder) names(t *change.Table) *tableNames {
	if n, ok := e.tables[t]; ok {
		return n
	}
	if len(e.tables) >= maxCachedTables {
		clear(e.tables)
	}
	n := &tableNames{cols: make([][]byte, len(t.Columns))}
	for i, c := range t.Columns {
		b := AppendStringS(nil, c.Name)
		n.cols[i] = append(b, ':')
	}
	var s []byte
	s = append(s, `"db":`...)
	s = AppendStringS(s, t.Database)
	if t.Schema != "" {
		s = append(s, `,"schema":`...)
		s = AppendStringS(s, t.Schema)
	}
	s = append(s, `,"table":`...)
	s = AppendStringS(s, t.Name)
	n.source = s
	e.tables[t] = n
	return n
}

// Key returns the record key for ev: the key columns of its row as a JSON
// object ({"id":1}), taken from the after image, or from the before image for
// a delete. It returns nil for tables without key columns and for truncates.
func (e *Encoder) Key(ev *change.Event) []byte {
	if !ev.Table.HasKey || ev.Op == change.OpTruncate {
		return nil
	}
	row := ev.After
	if row == nil {
		row = ev.Before
	}
	if row == nil {
		return nil
	}
	n := e.names(ev.Table)
	b := e.buf[:0]
	b = append(b, '{')
	first := true
	for i, c := range ev.Table.Columns {
		if !c.Key {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, n.cols[i]...)
		b = appendValue(b, row[i])
	}
	b = append(b, '}')
	e.buf = b
	return clone(b)
}

// Value returns the JSON envelope for ev. tsMs is the time Tideline
// processed the event (the envelope's top-level ts_ms).
func (e *Encoder) Value(ev *change.Event, tsMs int64) []byte {
	return clone(e.appendValue(ev, tsMs))
}

// ValueOrder returns Value(ev, tsMs) and Order(ev), in one allocation: what
// a source puts on each record.
func (e *Encoder) ValueOrder(ev *change.Event, tsMs int64) (value, order []byte) {
	b := e.appendValue(ev, tsMs)
	out := make([]byte, len(b), len(b)+orderLen)
	copy(out, b)
	out = appendOrder(out, ev)
	return out[:len(b):len(b)], out[len(b):]
}

// appendValue renders ev's envelope into the encoder's buffer.
func (e *Encoder) appendValue(ev *change.Event, tsMs int64) []byte {
	n := e.names(ev.Table)
	b := e.buf[:0]
	b = append(b, `{"before":`...)
	b = appendRow(b, n, ev.Before)
	b = append(b, `,"after":`...)
	b = appendRow(b, n, ev.After)
	b = append(b, `,"source":{"version":`...)
	b = AppendStringS(b, e.version)
	b = append(b, `,"connector":`...)
	b = AppendStringS(b, ev.Source.Connector)
	b = append(b, `,"name":`...)
	b = AppendStringS(b, ev.Source.Name)
	b = append(b, `,"ts_ms":`...)
	b = AppendInt(b, ev.Source.TsMs)
	b = append(b, `,"snapshot":`...)
	snap := ev.Source.Snapshot
	if snap == "" {
		snap = "false"
	}
	b = AppendStringS(b, snap)
	b = append(b, ',')
	b = append(b, n.source...)
	if ev.Source.Connector == "mysql" {
		b = appendMySQLSource(b, &ev.Source)
	} else {
		b = append(b, `,"txId":`...)
		if ev.Source.TxID != 0 {
			b = AppendInt(b, ev.Source.TxID)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `,"lsn":`...)
		if ev.Source.LSN != 0 {
			b = AppendInt(b, int64(ev.Source.LSN))
		} else {
			b = append(b, "null"...)
		}
	}
	b = append(b, `},"op":"`...)
	b = append(b, byte(ev.Op))
	b = append(b, `","ts_ms":`...)
	b = AppendInt(b, tsMs)
	b = append(b, `,"transaction":`...)
	if ev.TxOrder > 0 {
		if ev.TxName != "" {
			b = append(b, `{"id":`...)
			b = AppendStringS(b, ev.TxName)
		} else {
			b = append(b, `{"id":"`...)
			b = AppendInt(b, ev.Source.TxID)
			b = append(b, ':')
			b = AppendInt(b, int64(ev.TxLSN))
			b = append(b, '"')
		}
		b = append(b, `,"total_order":`...)
		b = AppendInt(b, ev.TxOrder)
		b = append(b, `,"data_collection_order":`...)
		b = AppendInt(b, ev.TxTableOrder)
		b = append(b, '}')
	} else {
		b = append(b, "null"...)
	}
	b = append(b, '}')
	e.buf = b
	return b
}

// appendMySQLSource writes the MySQL part of the source block, as
// Debezium's MySQL connector names it.
func appendMySQLSource(b []byte, s *change.Source) []byte {
	b = append(b, `,"server_id":`...)
	b = AppendInt(b, int64(s.ServerID))
	b = append(b, `,"gtid":`...)
	if s.GTID != "" {
		b = AppendStringS(b, s.GTID)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"file":`...)
	b = AppendStringS(b, s.File)
	b = append(b, `,"pos":`...)
	b = AppendInt(b, int64(s.Pos))
	b = append(b, `,"row":`...)
	b = AppendInt(b, int64(s.Row))
	b = append(b, `,"thread":`...)
	if s.Thread != 0 {
		b = AppendInt(b, s.Thread)
	} else {
		b = append(b, "null"...)
	}
	return b
}

func appendRow(b []byte, n *tableNames, row []change.Value) []byte {
	if row == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	for i, v := range row {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, n.cols[i]...)
		b = appendValue(b, v)
	}
	return append(b, '}')
}

func appendValue(b []byte, v change.Value) []byte {
	switch v.Kind {
	case change.Present:
		return append(b, v.JSON...)
	case change.Unavailable:
		return append(b, `"`+change.UnavailableMarker+`"`...)
	default:
		return append(b, "null"...)
	}
}

func clone(b []byte) []byte {
	out := make([]byte, len(b))
	copy(out, b)
	return out
}
