package apply

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// TestParseEnvelopeAgreesWithEncodingJSON checks the one-pass parser
// against encoding/json on envelopes the codec writes, with awkward values.
func TestParseEnvelopeAgreesWithEncodingJSON(t *testing.T) {
	tab := &change.Table{Database: "d", Schema: "s", Name: "t", HasKey: true, Columns: []change.Column{
		{Name: "id", Key: true}, {Name: `we"ird\name`}, {Name: "arr"}, {Name: "s"}, {Name: "n"}, {Name: "é"},
	}}
	enc := codec.NewEncoder("v")
	values := []string{`1`, `-2.5e10`, `"a\"b\\c\u00e9"`, `[1,[2,"]"],{"x":"}"}]`, `null`, `true`, `"` + change.UnavailableMarker + `"`, `{"k":[{}]}`, `""`}
	rng := rand.New(rand.NewPCG(1, 2))
	row := func() []change.Value {
		out := make([]change.Value, len(tab.Columns))
		for i := range out {
			v := values[rng.IntN(len(values))]
			if v == "null" {
				continue
			}
			out[i] = change.Value{Kind: change.Present, JSON: []byte(v)}
		}
		return out
	}
	for n := 0; n < 500; n++ {
		ev := change.Event{Op: []change.Op{change.OpCreate, change.OpUpdate, change.OpDelete, change.OpRead, change.OpTruncate}[n%5], Table: tab,
			Source: change.Source{Connector: "postgresql", TsMs: int64(n) * 1000, TxID: int64(n % 3)}, TxOrder: 1}
		if n%4 == 1 {
			ev.Source.Connector = "mysql"
			if n%8 == 1 {
				ev.Source.GTID = fmt.Sprintf("0-1-%d", n)
			}
		}
		switch ev.Op {
		case change.OpCreate, change.OpRead:
			ev.After = row()
		case change.OpUpdate:
			ev.Before, ev.After = row(), row()
		case change.OpDelete:
			ev.Before = row()
		}
		raw := enc.Value(&ev, 5)
		if n%7 == 0 {
			raw = []byte(strings.ReplaceAll(string(raw), ",", " ,\n\t"))
		}
		var want struct {
			Before map[string]json.RawMessage `json:"before"`
			After  map[string]json.RawMessage `json:"after"`
			Source struct {
				TsMs int64           `json:"ts_ms"`
				TxID json.RawMessage `json:"txId"`
				GTID *string         `json:"gtid"`
			} `json:"source"`
			Op string `json:"op"`
		}
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		got, _, err := parseEnvelope(raw, nil)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		same := func(label string, fs []field, has bool, m map[string]json.RawMessage) {
			if has != (m != nil) || len(fs) != len(m) {
				t.Fatalf("%s of %s: %d fields (has %v), want %d", label, raw, len(fs), has, len(m))
			}
			for _, f := range fs {
				w, ok := m[string(f.name)]
				if !ok || strings.TrimSpace(string(w)) != strings.TrimSpace(string(f.raw)) {
					t.Fatalf("%s of %s: %s = %s, want %s", label, raw, f.name, f.raw, w)
				}
			}
		}
		same("before", got.before, got.hasB, want.Before)
		same("after", got.after, got.hasA, want.After)
		if got.op != want.Op || got.tsMs != want.Source.TsMs {
			t.Fatalf("%s: op %q ts %d, want %q %d", raw, got.op, got.tsMs, want.Op, want.Source.TsMs)
		}
		wantTx := ""
		switch {
		case want.Source.GTID != nil:
			wantTx = *want.Source.GTID
		case string(want.Source.TxID) != "null":
			wantTx = string(want.Source.TxID)
		}
		if string(got.txID) != wantTx {
			t.Fatalf("%s: transaction id %q, want %q", raw, got.txID, wantTx)
		}
	}
}

func TestParseEnvelopeRejectsBadJSON(t *testing.T) {
	for _, bad := range []string{
		``, `[]`, `{"op":"c"`, `{"op":c}`, `{"after":{"a":1,}}`, `{"after":{"a":tru}}`, `{"after":[1]}`,
		`{"after":{"a":"x}}`, `{"op":"c"} trailing`, `{"after":{"a":{"b":1}}`, `{"op" "c"}`,
	} {
		if _, _, err := parseEnvelope([]byte(bad), nil); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func BenchmarkParseEnvelope(b *testing.B) {
	var cols []change.Column
	var vals []change.Value
	for i := 0; i < 8; i++ {
		cols = append(cols, change.Column{Name: fmt.Sprintf("column_%d", i)})
		vals = append(vals, change.Value{Kind: change.Present, JSON: []byte(`"some text value"`)})
	}
	tab := &change.Table{Database: "d", Schema: "s", Name: "t", Columns: cols}
	raw := codec.NewEncoder("v").Value(&change.Event{Op: change.OpCreate, Table: tab, After: vals, Source: change.Source{Connector: "postgresql"}}, 1)
	b.Run("parseEnvelope", func(b *testing.B) {
		scratch := make([]field, 0, 16)
		for b.Loop() {
			_, _, _ = parseEnvelope(raw, scratch[:0])
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			var e struct {
				Before, After map[string]json.RawMessage
				Op            string
			}
			_ = json.Unmarshal(raw, &e)
		}
	})
}

func TestScalar(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-0": true, "12": true, "1.5": true, "-1.5e+10": true, "2E3": true, "true": true, "null": true,
		"01": false, "1.": false, ".5": false, "1e": false, "-": false, "tru": false, "NaN": false, "0x1": false,
	} {
		if got := scalar([]byte(s)); got != want || got != json.Valid([]byte(s)) {
			t.Errorf("scalar(%q) = %v, want %v", s, got, want)
		}
	}
}
