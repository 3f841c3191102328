package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
)

const typesDDL = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.types (
	id int PRIMARY KEY,
	i2 smallint, i4 int, i8 bigint, num numeric, r real, d double precision, b boolean,
	t text, vc varchar(20), c char(5), by bytea, j json, jb jsonb, u uuid,
	dt date, tm time, ts timestamp, tstz timestamptz, iv interval,
	arr int[], tarr text[], m mood, marr mood[]
);`

const typesRow = `INSERT INTO public.types VALUES (%d,
	-32768, 2147483647, -9223372036854775808, 12345678901234567890.123456789012, 1.5, -3.25e100, true,
	'héllo "quoted" \ back
slash', 'varchar', 'ch', '\x00ff10', '{"a": [1, 2.5, null]}', '{"b": {"c": "d"}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
	'2026-11-22', '13:14:15.123456', '2026-11-22 13:14:15.654321', '2026-11-22 13:14:15.5+02', '1 year 2 mons 3 days 04:05:06.5',
	'{1,NULL,3}', '{"a b","c,d",NULL,"e\"f"}', 'happy', '{sad,ok}')`

// expectedSQL computes, with PostgreSQL's own functions, the documented
// JSON representation of each column (docs/types.md).
const expectedSQL = `SET intervalstyle = iso_8601;
SELECT json_build_object(
	'id', id, 'i2', i2, 'i4', i4, 'i8', i8, 'num', num::text, 'r', r, 'd', d, 'b', b,
	't', t, 'vc', vc, 'c', c, 'by', replace(encode(by, 'base64'), E'\n', ''), 'j', j::text, 'jb', jb::text, 'u', u::text,
	'dt', dt - date '1970-01-01', 'tm', (extract(epoch FROM tm) * 1000000)::bigint,
	'ts', (extract(epoch FROM ts) * 1000000)::bigint,
	'tstz', to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
	'iv', iv::text, 'arr', arr, 'tarr', tarr, 'm', m::text, 'marr', marr::text[]
)::text FROM public.types WHERE id = $1`

func expectedRow(t *testing.T, e *env, id int) map[string]any {
	t.Helper()
	c := e.conn()
	if _, err := c.Exec(context.Background(), "SET intervalstyle = iso_8601"); err != nil {
		t.Fatal(err)
	}
	var raw string
	if err := c.QueryRow(context.Background(), expectedSQL[len("SET intervalstyle = iso_8601;"):], id).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func compareRow(t *testing.T, label string, want, got map[string]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got columns %v, want %v", label, sortedKeys(got), sortedKeys(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: column %s missing", label, k)
			continue
		}
		if !sameJSON(w, g) {
			t.Errorf("%s: column %s = %#v, want %#v", label, k, g, w)
		}
	}
}

// sameJSON compares decoded JSON values; numbers compare as floats with a
// float32 tolerance (real columns print with extra digits).
func sameJSON(a, b any) bool {
	switch av := a.(type) {
	case float64:
		var bv float64
		switch x := b.(type) {
		case float64:
			bv = x
		case json.Number:
			f, err := x.Float64()
			if err != nil {
				return false
			}
			bv = f
		default:
			return false
		}
		return av == bv || math.Abs(av-bv) <= 1e-6*math.Max(math.Abs(av), math.Abs(bv))
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !sameJSON(av[i], bv[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k := range av {
			if !sameJSON(av[k], bv[k]) {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestTypesRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.exec(typesDDL)
	e.exec(fmt.Sprintf(typesRow, 1))                   // read by the snapshot
	e.exec("INSERT INTO public.types (id) VALUES (2)") // all NULL
	r := e.start(e.config([]string{"public.types"}, nil), daemon.Options{})
	c := e.consume("test.public.types")
	c.poll(2, 30*time.Second, isEvent)
	e.exec(fmt.Sprintf(typesRow, 3)) // read from the stream
	e.exec("INSERT INTO public.types (id) VALUES (4)")
	ms := c.poll(4, 30*time.Second, isEvent)

	byID := map[string]msg{}
	for _, m := range ms {
		byID[fmt.Sprint(m.Key["id"])] = m
	}
	for _, id := range []int{1, 3} {
		m := byID[strconv.Itoa(id)]
		wantOp := map[int]string{1: "r", 3: "c"}[id]
		if m.Value == nil || m.Value.Op != wantOp {
			t.Fatalf("row %d: got %+v, want op %s", id, m.Value, wantOp)
		}
		want := expectedRow(t, e, id)
		compareRow(t, fmt.Sprintf("row %d (op %s)", id, wantOp), want, toPlain(m.Value.After))
	}
	for _, id := range []string{"2", "4"} {
		m := byID[id]
		for k, v := range m.Value.After {
			if k != "id" && v != nil {
				t.Errorf("row %s: column %s = %v, want null", id, k, v)
			}
		}
		if len(m.Value.After) != 24 {
			t.Errorf("row %s: %d columns, want 24", id, len(m.Value.After))
		}
	}
	// Envelope metadata.
	snap, lastSnap, stream := byID["1"].Value, byID["2"].Value, byID["3"].Value
	if snap.Source.Snapshot != "first" || lastSnap.Source.Snapshot != "last" || stream.Source.Snapshot != "false" {
		t.Errorf("source.snapshot: snapshot rows %q, %q, stream row %q; want first, last, false",
			snap.Source.Snapshot, lastSnap.Source.Snapshot, stream.Source.Snapshot)
	}
	if stream.Source.Connector != "postgresql" || stream.Source.DB != "postgres" || stream.Source.Schema != "public" ||
		stream.Source.Table != "types" || stream.Source.TxID == nil || stream.Source.LSN == nil || stream.Transaction == nil {
		t.Errorf("stream source block incomplete: %s", byID["3"].Raw)
	}
	if stream.Source.TsMs <= 0 || stream.TsMs < stream.Source.TsMs {
		t.Errorf("ts_ms: source %d, envelope %d", stream.Source.TsMs, stream.TsMs)
	}
	r.stop(t)
}

// toPlain re-decodes a map so numbers are float64, like the expected side.
func toPlain(m map[string]any) map[string]any {
	raw, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return out
}

func TestToastUnchangedDeletesTruncateAndKeyChange(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.docs (id int PRIMARY KEY, n int, body text);
		CREATE TABLE public.full_docs (id int PRIMARY KEY, n int, body text);
		ALTER TABLE public.full_docs REPLICA IDENTITY FULL;`)
	r := e.start(e.config([]string{"public.*docs"}, func(c *config.Config) { c.Source.Snapshot = "never" }), daemon.Options{})
	c := e.consume("test.public.docs", "test.public.full_docs")
	// A large, incompressible value is stored out of line (TOASTed).
	big := `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 1000))`
	for _, tab := range []string{"docs", "full_docs"} {
		e.exec(fmt.Sprintf("INSERT INTO public.%s VALUES (1, 1, %s)", tab, big))
		e.exec(fmt.Sprintf("UPDATE public.%s SET n = 2 WHERE id = 1", tab))
		e.exec(fmt.Sprintf("UPDATE public.%s SET id = 10 WHERE id = 1", tab))
		e.exec(fmt.Sprintf("DELETE FROM public.%s WHERE id = 10", tab))
		e.exec(fmt.Sprintf("TRUNCATE public.%s", tab))
	}
	// per table: c, u, d+tombstone+c (key change), d+tombstone, t
	ms := c.poll(16, 30*time.Second, nil)
	for _, tab := range []string{"docs", "full_docs"} {
		var seq []string
		var body string
		for _, m := range ms {
			if m.Topic != "test.public."+tab {
				continue
			}
			if m.Value == nil {
				seq = append(seq, fmt.Sprintf("tombstone(%v)", m.Key["id"]))
				continue
			}
			seq = append(seq, fmt.Sprintf("%s(%v)", m.Value.Op, m.Key["id"]))
			if m.Value.Op == "c" && body == "" {
				body, _ = m.Value.After["body"].(string)
			}
			if m.Value.Op == "u" {
				got := m.Value.After["body"]
				if tab == "docs" && got != change.UnavailableMarker {
					t.Errorf("docs: unchanged TOAST value = %.40v…, want the marker %q", got, change.UnavailableMarker)
				}
				if tab == "full_docs" && got != body {
					t.Errorf("full_docs (REPLICA IDENTITY FULL): unchanged TOAST value = %.40v…, want the value itself", got)
				}
				if got == nil {
					t.Errorf("%s: unchanged TOAST value reported as NULL", tab)
				}
			}
			if m.Value.Op == "t" && (m.Key != nil || m.Value.Before != nil || m.Value.After != nil) {
				t.Errorf("%s: truncate event with key/row: %s", tab, m.Raw)
			}
		}
		want := "[c(1) u(1) d(1) tombstone(1) c(10) d(10) tombstone(10) t(<nil>)]"
		if fmt.Sprint(seq) != want {
			t.Errorf("%s: events %v, want %s", tab, seq, want)
		}
		if len(body) != 32000 {
			t.Errorf("%s: inserted body has %d chars, want 32000", tab, len(body))
		}
	}
	r.stop(t)
}
