package codec

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/tideline-cdc/tideline/pkg/change"
)

func TestAppendStringIsValidJSON(t *testing.T) {
	for _, s := range []string{"plain", `q"uo\te`, "tab\tnl\ncr\r", "\x00\x1f ctl", "héllo ✓", "bad \xff utf8", "<&>"} {
		out := AppendString(nil, []byte(s))
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Errorf("%q -> %s: not JSON: %v", s, out, err)
			continue
		}
		want := s
		if s == "bad \xff utf8" {
			want = "bad \ufffd utf8"
		}
		if back != want {
			t.Errorf("%q round-trips to %q", s, back)
		}
	}
}

func TestEnvelope(t *testing.T) {
	tab := &change.Table{Database: "db", Schema: "public", Name: "t\"x", Topic: "p.public.t", HasKey: true,
		Columns: []change.Column{{Name: "id", Key: true}, {Name: "name"}, {Name: "blob"}}}
	ev := &change.Event{Op: change.OpUpdate, Table: tab,
		Before:  []change.Value{{Kind: change.Present, JSON: []byte("1")}, {}, {Kind: change.Present, JSON: []byte(`"b"`)}},
		After:   []change.Value{{Kind: change.Present, JSON: []byte("1")}, {Kind: change.Present, JSON: []byte(`"n"`)}, {Kind: change.Unavailable}},
		Source:  change.Source{Connector: "postgresql", Name: "p", TsMs: 5, TxID: 7, LSN: 99},
		TxOrder: 2, TxTableOrder: 1, TxLSN: 120}
	e := NewEncoder("v1")
	if k := string(e.Key(ev)); k != `{"id":1}` {
		t.Errorf("key %s", k)
	}
	var env struct {
		Before, After map[string]any
		Source        map[string]any
		Op            string
		TsMs          int64 `json:"ts_ms"`
		Transaction   map[string]any
	}
	raw := e.Value(ev, 6)
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	if env.Op != "u" || env.TsMs != 6 || env.Before["name"] != nil || env.After["blob"] != change.UnavailableMarker {
		t.Errorf("envelope %s", raw)
	}
	if env.Source["table"] != `t"x` || env.Source["lsn"] != float64(99) || env.Source["txId"] != float64(7) || env.Source["snapshot"] != "false" {
		t.Errorf("source block %v", env.Source)
	}
	if env.Transaction["id"] != "7:120" || env.Transaction["total_order"] != float64(2) {
		t.Errorf("transaction %v", env.Transaction)
	}
	// A table without key columns has a null key.
	tab2 := &change.Table{Name: "nk", Columns: []change.Column{{Name: "a"}}}
	if k := e.Key(&change.Event{Op: change.OpCreate, Table: tab2, After: []change.Value{{}}}); k != nil {
		t.Errorf("keyless table key %s", k)
	}
}

func BenchmarkValue(b *testing.B) {
	tab := &change.Table{Database: "db", Schema: "public", Name: "t", HasKey: true,
		Columns: []change.Column{{Name: "id", Key: true}, {Name: "name"}, {Name: "qty"}, {Name: "price"}, {Name: "at"}}}
	ev := &change.Event{Op: change.OpCreate, Table: tab, After: []change.Value{
		{Kind: change.Present, JSON: []byte("12345")}, {Kind: change.Present, JSON: []byte(`"widget"`)},
		{Kind: change.Present, JSON: []byte("3")}, {Kind: change.Present, JSON: []byte(`"19.99"`)},
		{Kind: change.Present, JSON: []byte(`"2026-11-22T10:00:00.000000Z"`)}},
		Source: change.Source{Connector: "postgresql", Name: "p", TsMs: 5, TxID: 7, LSN: 99}, TxOrder: 1, TxTableOrder: 1}
	e := NewEncoder("v1")
	b.ReportAllocs()
	for b.Loop() {
		e.Key(ev)
		e.Value(ev, 1)
	}
}

func TestOrderSortsLikeTheLog(t *testing.T) {
	pg := func(lsn, txLSN uint64, order int64) []byte {
		return Order(&change.Event{Source: change.Source{Connector: "postgresql", LSN: lsn}, TxLSN: txLSN, TxOrder: order})
	}
	my := func(file string, pos uint64, row int32) []byte {
		return Order(&change.Event{Source: change.Source{Connector: "mysql", File: file, Pos: pos, Row: row}})
	}
	// Each list is in log order.
	for name, seq := range map[string][][]byte{
		"postgres": {pg(0x100, 0, 0), pg(0x100, 0, 0), pg(0x90, 0x180, 1), pg(0x50, 0x180, 2), pg(0x170, 0x1000, 1), pg(0, 0x1_0000_0000, 1)},
		"mysql":    {my("binlog.000009", 900, 0), my("binlog.000009", 1200, 0), my("binlog.000009", 1200, 3), my("binlog.000010", 4, 0), my("binlog.000100", 4, 0)},
	} {
		for i := 1; i < len(seq); i++ {
			if bytes.Compare(seq[i-1], seq[i]) > 0 {
				t.Errorf("%s: %s sorts after %s", name, seq[i-1], seq[i])
			}
			if len(seq[i]) != len(seq[0]) {
				t.Errorf("%s: tokens of different lengths", name)
			}
		}
	}
	if got := string(pg(0, 0xABC, 7)); got != "0000000000000abc00000007" {
		t.Errorf("postgres token %s", got)
	}
}

func TestValueOrderIsValueAndOrder(t *testing.T) {
	tab := &change.Table{Database: "d", Schema: "s", Name: "t", Columns: []change.Column{{Name: "id", Key: true}}, HasKey: true}
	for _, ev := range []change.Event{
		{Op: change.OpCreate, Table: tab, After: []change.Value{{Kind: change.Present, JSON: []byte("1")}}, Source: change.Source{Connector: "postgresql", LSN: 9}, TxOrder: 3, TxLSN: 0x2a},
		{Op: change.OpCreate, Table: tab, After: []change.Value{{Kind: change.Present, JSON: []byte("2")}}, Source: change.Source{Connector: "mysql", File: "b.000007", Pos: 99, Row: 2}, TxOrder: 1},
	} {
		e := NewEncoder("v")
		v, o := e.ValueOrder(&ev, 5)
		if want := e.Value(&ev, 5); !bytes.Equal(v, want) {
			t.Errorf("value %s, want %s", v, want)
		}
		if want := Order(&ev); !bytes.Equal(o, want) {
			t.Errorf("order %s, want %s", o, want)
		}
		// The two share an allocation: appending to the value must not
		// overwrite the order.
		_ = append(v, "xxxxxxxx"...)
		if !bytes.Equal(o, Order(&ev)) {
			t.Errorf("appending to the value changed the order: %s", o)
		}
	}
}
