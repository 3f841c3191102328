package sqlsink

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	duckdb "github.com/duckdb/duckdb-go/v2"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/sinks/sinktest"
)

// duckEnv is one test's database file.
type duckEnv struct {
	path string
}

func newDuckEnv(t *testing.T) *duckEnv {
	return &duckEnv{path: filepath.Join(t.TempDir(), "wh", "warehouse.duckdb")}
}

// sink opens a sink on the file; with cfg.KeepOpen false (the default
// here) the file is free between Apply calls, so tests can read it.
func (e *duckEnv) sink(t *testing.T, cfg Config) *DuckDB {
	t.Helper()
	cfg.Name, cfg.Type, cfg.Path = "dw", "duckdb", e.path
	s, err := NewDuckDB(context.Background(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// query reads a query's rows as text (DuckDB's own rendering), "NULL" for
// NULL.
func (e *duckEnv) query(t *testing.T, q string) [][]string {
	t.Helper()
	c, err := duckdb.NewConnector(e.path+"?access_mode=READ_ONLY", nil)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	rows, err := db.Query("SELECT COLUMNS(*)::VARCHAR FROM (" + q + ")")
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		r := make([]string, len(cols))
		for i, v := range vals {
			r[i] = "NULL"
			if v.Valid {
				r[i] = v.String
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// expect checks a query's rows, each joined with "|".
func (e *duckEnv) expect(t *testing.T, q string, want ...string) {
	t.Helper()
	var got []string
	for _, r := range e.query(t, q) {
		got = append(got, strings.Join(r, "|"))
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot  %q\nwant %q", q, got, want)
	}
}

func dcol(name string, l change.Logical, typ string) change.Column {
	return change.Column{Name: name, Logical: l, Type: typ}
}

func dkey(c change.Column) change.Column { c.Key = true; return c }

func dtable(name string, cols ...change.Column) *change.Table {
	t := &change.Table{Database: "app", Schema: "public", Name: name, Topic: "app.public." + name, Columns: cols}
	t.HasKey = slices.ContainsFunc(cols, func(c change.Column) bool { return c.Key })
	return t
}

// dord is a change's Order: fixed-width hex, like codec.Order.
func dord(n int) []byte { return fmt.Appendf(nil, "%024x", n) }

// drow builds a change of t; vals are JSON values aligned with t.Columns,
// "" for absent.
func drow(t *change.Table, op change.Op, order int, vals ...string) apply.Row {
	r := apply.Row{Op: op, Order: dord(order)}
	var k []string
	for i, v := range vals {
		if v != "" {
			r.Values = append(r.Values, []byte(v))
		} else {
			r.Values = append(r.Values, nil)
		}
		if t.Columns[i].Key {
			k = append(k, fmt.Sprintf("%q:%s", t.Columns[i].Name, v))
		}
	}
	r.Key = []byte("{" + strings.Join(k, ",") + "}")
	return r
}

func dbatch(t *change.Table, rows ...apply.Row) *apply.TableBatch {
	return &apply.TableBatch{Table: t, Topic: t.Topic, Rows: rows}
}

func duckApply(t *testing.T, s *DuckDB, b *apply.TableBatch) {
	t.Helper()
	if err := s.Apply(context.Background(), b); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func TestDuckDBConformance(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("KeepOpen=%v", keep), func(t *testing.T) {
			e := newDuckEnv(t)
			sinktest.Run(t, sinktest.Target{
				Open: func(t *testing.T) apply.Sink {
					cfg := Config{Name: "dw", Type: "duckdb", Path: e.path, KeepOpen: keep}
					s, err := NewDuckDB(context.Background(), cfg, zaptest.NewLogger(t))
					if err != nil {
						t.Fatal(err)
					}
					return s
				},
				Rows: func(t *testing.T, schema, table string) []map[string]*string {
					return e.rows(t, fmt.Sprintf("SELECT * FROM %s.%s", duckIdent(schema), duckIdent(table)))
				},
			})
		})
	}
}

// rows reads a query's rows as column -> text (nil for NULL).
func (e *duckEnv) rows(t *testing.T, q string) []map[string]*string {
	t.Helper()
	c, err := duckdb.NewConnector(e.path+"?access_mode=READ_ONLY", nil)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	rows, err := db.Query("SELECT COLUMNS(*)::VARCHAR FROM (" + q + ")")
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []map[string]*string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		r := map[string]*string{}
		for i, v := range vals {
			r[cols[i]] = nil
			if v.Valid {
				r[cols[i]] = &v.String
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDuckDBTypes(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("types",
		dkey(dcol("id", change.Int32, "int4")),
		dcol("i16", change.Int16, "int2"),
		dcol("i64", change.Int64, "int8"),
		dcol("u64", change.Uint64, "bigint unsigned"),
		dcol("dec", change.Decimal, "numeric(10,2)"),
		dcol("wide", change.Decimal, "numeric(50,10)"),
		dcol("anynum", change.Decimal, "numeric"),
		dcol("f32", change.Float32, "float4"),
		dcol("f64", change.Float64, "float8"),
		dcol("b", change.Bool, "bool"),
		dcol("s", change.String, "text"),
		dcol("by", change.Bytes, "bytea"),
		dcol("j", change.JSON, "jsonb"),
		dcol("arr", change.Array, "_int4"),
		dcol("u", change.UUID, "uuid"),
		dcol("d", change.Date, "date"),
		dcol("tm", change.Time, "time"),
		dcol("ts", change.Timestamp, "timestamp"),
		dcol("tstz", change.TimestampTZ, "timestamptz"),
		dcol("ttz", change.TimeTZ, "timetz"),
		dcol("iv", change.Interval, "interval"),
		dcol("inet", change.String, "inet"),
	)
	tsMicros := int64(1795353255654321)
	ts := time.UnixMicro(tsMicros).UTC().Format("2006-01-02 15:04:05.999999")
	duckApply(t, s, dbatch(tb,
		drow(tb, change.OpCreate, 1, `1`, `-32768`, `-9223372036854775808`, `18446744073709551615`,
			`"12345678.90"`, `"12345678901234567890.1234567890"`, `"NaN"`, `1.5`, `-3.25e+100`, `true`,
			`"héllo \"x\""`, `"AP8Q"`, `"{\"b\": {\"c\": \"d\"}}"`, `[1,null,3]`,
			`"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, `20414`, `47655123456`, fmt.Sprint(tsMicros),
			`"2026-11-22T11:14:15.500000Z"`, `"23:00:00.000000Z"`, `"P1Y2M3DT4H5M6.5S"`, `"192.168.0.1/32"`),
		drow(tb, change.OpRead, 1, `2`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`,
			`null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`, `null`),
	))
	cols := `id, i16, i64, u64, dec, wide, anynum, f32, f64, b, s, "by", j, arr, u, d, tm, ts, tstz, ttz, iv, inet`
	e.expect(t, "SELECT "+cols+", _tideline_op FROM public.types ORDER BY id",
		`1|-32768|-9223372036854775808|18446744073709551615|12345678.90|12345678901234567890.1234567890|NaN|1.5|-3.25e+100|true|`+
			`héllo "x"|\x00\xFF\x10|{"b": {"c": "d"}}|[1,null,3]|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|2025-11-22|13:14:15.123456|`+ts+
			`|2026-11-22 11:14:15.5+00|23:00:00+00|P1Y2M3DT4H5M6.5S|192.168.0.1/32|c`,
		`2|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|r`)
	e.expect(t, `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'types' ORDER BY ordinal_position`,
		"id|INTEGER", "i16|SMALLINT", "i64|BIGINT", "u64|UBIGINT", "dec|DECIMAL(10,2)", "wide|VARCHAR", "anynum|VARCHAR",
		"f32|FLOAT", "f64|DOUBLE", "b|BOOLEAN", "s|VARCHAR", "by|BLOB", "j|JSON", "arr|JSON", "u|UUID", "d|DATE", "tm|TIME",
		"ts|TIMESTAMP", "tstz|TIMESTAMP WITH TIME ZONE", "ttz|TIME WITH TIME ZONE", "iv|VARCHAR", "inet|VARCHAR",
		"_tideline_position|VARCHAR", "_tideline_op|VARCHAR", "_tideline_applied_at|TIMESTAMP WITH TIME ZONE")
	// JSON columns hold JSON, not strings that look like it.
	e.expect(t, "SELECT j->'b'->>'c', arr->>1 FROM public.types WHERE id = 1", "d|NULL")

	// An update: the newest change wins, and its order is kept.
	duckApply(t, s, dbatch(tb,
		drow(tb, change.OpUpdate, 2, `1`, `7`, `8`, `9`, `"1.50"`, `"1"`, `"2"`, `"NaN"`, `"-Infinity"`, `false`,
			`"x"`, `""`, `"[]"`, `[]`, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"`, `0`, `0`, `0`,
			`"1970-01-01T00:00:00Z"`, `"00:00:00Z"`, `"PT0S"`, `"::1/128"`)))
	e.expect(t, "SELECT "+cols+", _tideline_op, _tideline_position FROM public.types WHERE id = 1",
		`1|7|8|9|1.50|1|2|nan|-inf|false|x||[]|[]|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12|1970-01-01|00:00:00|1970-01-01 00:00:00|`+
			`1970-01-01 00:00:00+00|00:00:00+00|PT0S|::1/128|u|`+string(dord(2)))
}

func TestDuckDBReplay(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("name", change.String, "text"))
	older := dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `"old"`), drow(tb, change.OpCreate, 2, `2`, `"two"`))
	newer := dbatch(tb, drow(tb, change.OpUpdate, 5, `1`, `"new"`), drow(tb, change.OpCreate, 6, `3`, `"three"`))
	duckApply(t, s, older)
	duckApply(t, s, newer)
	q := "SELECT id, name, _tideline_position, _tideline_op, _tideline_applied_at::VARCHAR FROM public.items ORDER BY id"
	before := e.query(t, q)
	duckApply(t, s, newer) // the same batch again
	duckApply(t, s, older) // an older one after it
	if got := e.query(t, q); !slices.EqualFunc(got, before, slices.Equal) {
		t.Errorf("a replay changed the table:\nbefore %q\nafter  %q", before, got)
	}
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|new", "2|two", "3|three")
}

func TestDuckDBDelete(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("name", change.String, "text"))
	insert := dbatch(tb, drow(tb, change.OpCreate, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`))
	duckApply(t, s, insert)
	// A delete carries the before image: here only the key.
	duckApply(t, s, dbatch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")
	e.expect(t, "SELECT table_name, key, position FROM public._tideline_tombstones", `items|{"id":1}|`+string(dord(5)))

	duckApply(t, s, insert) // a replay of the older insert
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")

	// A change newer than the delete brings the row back.
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 7, `1`, `"again"`)))
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|again", "2|b")
}

func TestDuckDBTruncate(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("name", change.String, "text"))
	insert := dbatch(tb, drow(tb, change.OpCreate, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`))
	duckApply(t, s, insert)
	tr := dbatch(tb, drow(tb, change.OpCreate, 6, `1`, `"after"`))
	tr.Truncate = dord(5)
	duckApply(t, s, tr)
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|after")
	e.expect(t, "SELECT key, position FROM public._tideline_tombstones", "*|"+string(dord(5)))

	duckApply(t, s, insert) // older than the truncate: stays gone
	duckApply(t, s, tr)
	e.expect(t, "SELECT id, name, _tideline_position FROM public.items ORDER BY id", "1|after|"+string(dord(6)))
}

func TestDuckDBSoftDelete(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{SoftDelete: true})
	tb := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("name", change.String, "text"))
	insert := dbatch(tb, drow(tb, change.OpCreate, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`))
	duckApply(t, s, insert)
	duckApply(t, s, dbatch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	q := "SELECT id, name, _tideline_op, _tideline_deleted FROM public.items ORDER BY id"
	e.expect(t, q, "1|a|d|true", "2|b|c|false")
	duckApply(t, s, insert) // older: the row stays deleted
	e.expect(t, q, "1|a|d|true", "2|b|c|false")

	// Row 2 is marked by the truncate and then updated, in one
	// transaction.
	tr := dbatch(tb, drow(tb, change.OpCreate, 7, `3`, `"c"`), drow(tb, change.OpUpdate, 8, `2`, `"b2"`))
	tr.Truncate = dord(6)
	duckApply(t, s, tr)
	e.expect(t, q, "1|a|t|true", "2|b2|u|false", "3|c|c|false")
	e.expect(t, "SELECT count(*) FROM public._tideline_tombstones WHERE key <> '*'", "0")
}

func TestDuckDBAbsentValues(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("docs", dkey(dcol("id", change.Int32, "int4")), dcol("body", change.String, "text"),
		dcol("blob", change.Bytes, "bytea"), dcol("n", change.Int32, "int4"))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `"big"`, `"AAE="`, `1`)))
	// An unchanged TOASTed value: the marker, or no value at all.
	duckApply(t, s, dbatch(tb,
		drow(tb, change.OpUpdate, 2, `1`, `"`+change.UnavailableMarker+`"`, ``, `2`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs", `1|big|\x00\x01|2`)
	// JSON null is SQL NULL, unlike an absent value.
	duckApply(t, s, dbatch(tb, drow(tb, change.OpUpdate, 3, `1`, `null`, ``, `3`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs", `1|NULL|\x00\x01|3`)

	// Rows carrying different columns in one batch.
	duckApply(t, s, dbatch(tb,
		drow(tb, change.OpUpdate, 4, `1`, `"b"`, ``, `4`),
		drow(tb, change.OpCreate, 4, `2`, `"c"`, `"AAI="`, `5`),
		drow(tb, change.OpCreate, 4, `3`, ``, ``, `6`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs ORDER BY id", `1|b|\x00\x01|4`, `2|c|\x00\x02|5`, `3|NULL|NULL|6`)
}

func TestDuckDBLargeBatch(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("name", change.String, "text"))
	const n = 5000 // more than one appender chunk (2048 rows)
	var rows []apply.Row
	for i := range n {
		rows = append(rows, drow(tb, change.OpCreate, i+1, fmt.Sprint(i), fmt.Sprintf(`"n%d"`, i)))
	}
	duckApply(t, s, dbatch(tb, rows...))
	for i := range rows {
		if i%2 == 0 {
			rows[i] = drow(tb, change.OpDelete, n+i+1, fmt.Sprint(i), ``)
		}
	}
	duckApply(t, s, dbatch(tb, rows...))
	e.expect(t, "SELECT count(*), min(id), max(name) FROM public.items", fmt.Sprintf("%d|1|n999", n/2))
	e.expect(t, "SELECT count(*) FROM public._tideline_tombstones", fmt.Sprint(n/2))
}

func TestDuckDBTableDroppedBetweenBatches(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")), dcol("name", change.String, "text"))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	c, err := duckdb.NewConnector(e.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	if _, err := db.Exec("DROP TABLE public.items"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 2, `2`, `"b"`)))
	e.expect(t, "SELECT id, name FROM public.items", "2|b")
}

func TestDuckDBEvolve(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	v1 := dtable("items", dkey(dcol("id", change.Int32, "int4")), dcol("qty", change.Int16, "int2"),
		dcol("price", change.Float32, "float4"))
	duckApply(t, s, dbatch(v1, drow(v1, change.OpCreate, 1, `1`, `5`, `1.5`)))

	// The source added a column and widened the others, key included.
	v2 := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("qty", change.Int32, "int4"),
		dcol("price", change.Float64, "float8"), dcol("note", change.String, "text"))
	duckApply(t, s, dbatch(v2, drow(v2, change.OpCreate, 2, `2`, `70000`, `0.1`, `"hi"`)))
	e.expect(t, "SELECT id, qty, price, note FROM public.items ORDER BY id", "1|5|1.5|NULL", "2|70000|0.1|hi")
	// DuckDB cannot retype a primary-key column: it stays INTEGER (with a
	// warning), and values that fit still apply.
	e.expect(t, `SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name IN ('id', 'qty', 'price', 'note') ORDER BY ordinal_position`,
		"id|INTEGER", "qty|INTEGER", "price|DOUBLE", "note|VARCHAR")

	// A later batch of the old shape still applies.
	duckApply(t, s, dbatch(v1, drow(v1, change.OpUpdate, 3, `1`, `6`, `2.5`)))
	e.expect(t, "SELECT id, qty, price, note FROM public.items ORDER BY id", "1|6|2.5|NULL", "2|70000|0.1|hi")

	// A signed column whose source became unsigned goes to HUGEINT.
	v3 := dtable("items", dkey(dcol("id", change.Int64, "int8")), dcol("qty", change.Uint64, "bigint unsigned"),
		dcol("price", change.Float64, "float8"), dcol("note", change.String, "text"))
	duckApply(t, s, dbatch(v3, drow(v3, change.OpUpdate, 4, `2`, `18446744073709551615`, `0.1`, `"hi"`)))
	e.expect(t, "SELECT qty FROM public.items ORDER BY id", "6", "18446744073709551615")
	e.expect(t, `SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'qty'`, "HUGEINT")
}

func TestDuckDBBadValues(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")), dcol("qty", change.Int16, "int2"),
		dcol("j", change.JSON, "json"))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `1`, `"{}"`)))

	// A string for an integer column: found in Go, that row's fault.
	err := s.Apply(context.Background(), dbatch(tb,
		drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`),
		drow(tb, change.OpCreate, 3, `3`, `"abc"`, `"{}"`)))
	var re *apply.RowError
	if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "qty") {
		t.Fatalf("got %v, want a RowError for row 1, column qty", err)
	}

	// Values only DuckDB rejects: permanent, and nothing of the batch is
	// written.
	for _, bad := range []apply.Row{
		drow(tb, change.OpCreate, 3, `3`, `70000`, `"{}"`),
		drow(tb, change.OpCreate, 3, `3`, `1`, `"{not json"`),
	} {
		err = s.Apply(context.Background(), dbatch(tb, drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`), bad))
		if err == nil || !apply.IsPermanent(err) {
			t.Fatalf("got %v, want a permanent error", err)
		}
	}
	e.expect(t, "SELECT id, qty FROM public.items ORDER BY id", "1|1")

	// Rows apart, the good one applies.
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`)))
	e.expect(t, "SELECT id, qty FROM public.items ORDER BY id", "1|1", "2|2")
}

func TestDuckDBNoKey(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("log", dcol("msg", change.String, "text"))
	err := s.Apply(context.Background(), dbatch(tb, drow(tb, change.OpCreate, 1, `"x"`)))
	var rej *apply.RejectError
	if !errors.As(err, &rej) {
		t.Fatalf("got %v, want a RejectError", err)
	}
	if _, err := os.Stat(e.path); err == nil {
		t.Error("a rejected batch opened the database")
	}
}

func TestDuckDBTableFormat(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{TableFormat: "{db}_{table}"})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`)))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpDelete, 2, `1`)))
	e.expect(t, "SELECT count(*) FROM main.app_items", "0")
	e.expect(t, "SELECT table_name FROM main._tideline_tombstones", "app_items")
}

func TestDuckDBCanceled(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Apply(ctx, dbatch(tb, drow(tb, change.OpCreate, 1, `1`))); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestDuckDBQueryBetweenBatches(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")), dcol("name", change.String, "text"))
	ctx := context.Background()
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	var out bytes.Buffer
	if err := QueryDuckDB(ctx, e.path, "SELECT id, name FROM public.items ORDER BY id", &out); err != nil {
		t.Fatal(err)
	}
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 2, `2`, `"bé\nc"`), drow(tb, change.OpCreate, 2, `3`, `null`)))
	if err := QueryDuckDB(ctx, e.path, "SELECT id, name FROM public.items ORDER BY id DESC;", &out); err != nil {
		t.Fatal(err)
	}
	want := "id | name\n" +
		"---+-----\n" +
		"1  | a\n" +
		"(1 row)\n" +
		"id | name\n" +
		"---+------\n" +
		"3  | NULL\n" +
		`2  | bé\nc` + "\n" +
		"1  | a\n" +
		"(3 rows)\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}

	// A statement that cannot be a subquery runs as it is.
	out.Reset()
	if err := QueryDuckDB(ctx, e.path, "PRAGMA version", &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "library_version") {
		t.Errorf("PRAGMA version printed %q", out.String())
	}
	if err := QueryDuckDB(ctx, e.path, "SELECT nope FROM public.items", &out); err == nil {
		t.Error("a bad query gave no error")
	}
	if err := QueryDuckDB(ctx, filepath.Join(t.TempDir(), "none.duckdb"), "SELECT 1", &out); err == nil {
		t.Error("a missing file gave no error")
	}
}

func TestDuckDBKeepOpen(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{KeepOpen: true})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")), dcol("name", change.String, "text"))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpDelete, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`)))
	if s.db == nil {
		t.Fatal("keep_open closed the database")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	e.expect(t, "SELECT id, name FROM public.items", "2|b")
}

// TestDuckDBQueryWaitsForWriter holds the file open for writing in another
// process (DuckDB's lock is per process) and checks that QueryDuckDB
// waits for it instead of failing.
func TestDuckDBQueryWaitsForWriter(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", dkey(dcol("id", change.Int32, "int4")))
	duckApply(t, s, dbatch(tb, drow(tb, change.OpCreate, 1, `1`)))

	cmd := exec.Command(os.Args[0], "-test.run=^TestDuckDBHoldHelper$")
	cmd.Env = append(os.Environ(), "TIDELINE_DUCKDB_HOLD="+e.path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait() //nolint:errcheck // checked below
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "holding\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}
	// The writer holds the file now: a plain read-only open fails.
	if c, err := duckdb.NewConnector(e.path+"?access_mode=READ_ONLY", nil); err == nil {
		c.Close()
		t.Fatal("the helper does not hold the file")
	}
	// The sink cannot open it either: a transient error, retried.
	err = s.Apply(context.Background(), dbatch(tb, drow(tb, change.OpCreate, 2, `2`)))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "lock") {
		t.Errorf("apply while another process holds the file: got %v, want a transient lock error", err)
	}
	var out bytes.Buffer
	if err := QueryDuckDB(context.Background(), e.path, "SELECT count(*) AS n FROM public.items", &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "n\n-\n1\n(1 row)\n" {
		t.Errorf("got %q", out.String())
	}
}

// TestDuckDBHoldHelper is the process TestDuckDBQueryWaitsForWriter starts.
func TestDuckDBHoldHelper(t *testing.T) {
	path := os.Getenv("TIDELINE_DUCKDB_HOLD")
	if path == "" {
		t.Skip("run by TestDuckDBQueryWaitsForWriter")
	}
	c, err := duckdb.NewConnector(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("holding")
	time.Sleep(time.Second)
	c.Close()
}
