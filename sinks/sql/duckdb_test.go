package sqlsink

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// readOnly opens the file read-only, for the test to read it.
func (e *duckEnv) readOnly(t *testing.T) *sql.DB {
	t.Helper()
	c, err := duckdb.NewConnector(e.path+"?access_mode=READ_ONLY", nil)
	if err != nil {
		t.Fatal(err)
	}
	return sql.OpenDB(c)
}

// duckText selects q's columns as text (DuckDB's own rendering).
func duckText(q string) string { return "SELECT COLUMNS(*)::VARCHAR FROM (" + q + ")" }

// query reads a query's rows as text (DuckDB's own rendering), "NULL" for
// NULL.
func (e *duckEnv) query(t *testing.T, q string) [][]string {
	t.Helper()
	db := e.readOnly(t)
	defer db.Close()
	return textRows(t, db, duckText(q))
}

// expect checks a query's rows, each joined with "|".
func (e *duckEnv) expect(t *testing.T, q string, want ...string) {
	t.Helper()
	expectRows(t, e.query(t, q), q, want...)
}

func dtable(name string, cols ...change.Column) *change.Table {
	return table("app", "public", "app.public."+name, name, cols...)
}

// itemsTable is public.items (id int8 key, name text).
func itemsTable() *change.Table {
	return dtable("items", key(col("id", change.Int64, "int8")), col("name", change.String, "text"))
}

// itemsAB is itemsTable and a batch creating rows 1 "a" and 2 "b", at
// orders 2 and 3.
func itemsAB() (*change.Table, *apply.TableBatch) {
	tb := itemsTable()
	return tb, batch(tb, drow(tb, change.OpCreate, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`))
}

// dord is a change's Order.
func dord(n int) []byte { return []byte(hexOrder(n, 24)) }

// drow builds a change of t; vals are JSON values aligned with t.Columns,
// "" for absent.
func drow(t *change.Table, op change.Op, order int, vals ...string) apply.Row {
	return row(t, op, dord(order), vals...)
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
	db := e.readOnly(t)
	defer db.Close()
	return mapRows(t, db, duckText(q))
}

func TestDuckDBTypes(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("types",
		key(col("id", change.Int32, "int4")),
		col("i16", change.Int16, "int2"),
		col("i64", change.Int64, "int8"),
		col("u64", change.Uint64, "bigint unsigned"),
		col("dec", change.Decimal, "numeric(10,2)"),
		col("wide", change.Decimal, "numeric(50,10)"),
		col("anynum", change.Decimal, "numeric"),
		col("f32", change.Float32, "float4"),
		col("f64", change.Float64, "float8"),
		col("b", change.Bool, "bool"),
		col("s", change.String, "text"),
		col("by", change.Bytes, "bytea"),
		col("j", change.JSON, "jsonb"),
		col("arr", change.Array, "_int4"),
		col("u", change.UUID, "uuid"),
		col("d", change.Date, "date"),
		col("tm", change.Time, "time"),
		col("ts", change.Timestamp, "timestamp"),
		col("tstz", change.TimestampTZ, "timestamptz"),
		col("ttz", change.TimeTZ, "timetz"),
		col("iv", change.Interval, "interval"),
		col("inet", change.String, "inet"),
	)
	tsMicros := int64(1795353255654321)
	ts := time.UnixMicro(tsMicros).UTC().Format("2006-01-02 15:04:05.999999")
	mustApply(t, s, batch(tb,
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
	mustApply(t, s, batch(tb,
		drow(tb, change.OpUpdate, 2, `1`, `7`, `8`, `9`, `"1.50"`, `"1"`, `"2"`, `"NaN"`, `"-Infinity"`, `false`,
			`"x"`, `""`, `"[]"`, `[]`, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"`, `0`, `0`, `0`,
			`"1970-01-01T00:00:00Z"`, `"00:00:00Z"`, `"PT0S"`, `"::1/128"`)))
	e.expect(t, "SELECT "+cols+", _tideline_op, _tideline_position FROM public.types WHERE id = 1",
		`1|7|8|9|1.50|1|2|nan|-inf|false|x||[]|[]|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12|1970-01-01|00:00:00|1970-01-01 00:00:00|`+
			`1970-01-01 00:00:00+00|00:00:00+00|PT0S|::1/128|u|`+string(dord(2)))
}

// TestDuckDBTimestampKinds hands a timestamp key column to DuckDB as
// numbers while every value of a batch is one, and as text when one is
// "infinity": both kinds insert, merge and delete the same rows.
func TestDuckDBTimestampKinds(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("events", key(col("ts", change.Timestamp, "timestamp")), col("n", change.Int32, "int4"))
	numbers := batch(tb, drow(tb, change.OpCreate, 1, `1000001`, `1`), drow(tb, change.OpCreate, 1, `-1`, `2`))
	mixed := batch(tb, drow(tb, change.OpCreate, 2, `"infinity"`, `3`), drow(tb, change.OpUpdate, 2, `1000001`, `10`))
	r, err := renderDuck(target{schema: "public", name: "events"}, numbers, groupByPresence(numbers.Rows))
	if err != nil {
		t.Fatal(err)
	}
	if r.kinds[0] != duckMicros || r.kinds[1] != duckInt {
		t.Fatalf("kinds of a batch of numbers: %v", r.kinds)
	}
	if r, err = renderDuck(target{schema: "public", name: "events"}, mixed, groupByPresence(mixed.Rows)); err != nil {
		t.Fatal(err)
	}
	if r.kinds[0] != duckVarchar {
		t.Fatalf("kinds of a batch with infinity: %v", r.kinds)
	}
	mustApply(t, s, numbers)
	mustApply(t, s, mixed)
	q := "SELECT ts, n, _tideline_op FROM public.events ORDER BY ts"
	e.expect(t, q, "1969-12-31 23:59:59.999999|2|c", "1970-01-01 00:00:01.000001|10|u", "infinity|3|c")
	// Deletes match the rows' keys, as numbers and as text.
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 3, `-1`, ``)))
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 3, `"infinity"`, ``), drow(tb, change.OpUpdate, 3, `1000001`, `11`)))
	e.expect(t, q, "1970-01-01 00:00:01.000001|11|u")
}

func TestDuckDBReplay(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := itemsTable()
	older := batch(tb, drow(tb, change.OpCreate, 1, `1`, `"old"`), drow(tb, change.OpCreate, 2, `2`, `"two"`))
	newer := batch(tb, drow(tb, change.OpUpdate, 5, `1`, `"new"`), drow(tb, change.OpCreate, 6, `3`, `"three"`))
	mustApply(t, s, older)
	mustApply(t, s, newer)
	q := "SELECT id, name, _tideline_position, _tideline_op, _tideline_applied_at::VARCHAR FROM public.items ORDER BY id"
	before := e.query(t, q)
	mustApply(t, s, newer) // the same batch again
	mustApply(t, s, older) // an older one after it
	if got := e.query(t, q); !slices.EqualFunc(got, before, slices.Equal) {
		t.Errorf("a replay changed the table:\nbefore %q\nafter  %q", before, got)
	}
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|new", "2|two", "3|three")
}

func TestDuckDBDelete(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb, insert := itemsAB()
	mustApply(t, s, insert)
	// A delete carries the before image: here only the key.
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")
	e.expect(t, "SELECT table_name, key, position FROM public._tideline_tombstones", `items|{"id":1}|`+string(dord(5)))

	mustApply(t, s, insert) // a replay of the older insert
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")

	// A change newer than the delete brings the row back.
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 7, `1`, `"again"`)))
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|again", "2|b")
}

// TestDuckDBDeleteKeepOpen checks the tombstones with the file held open:
// the sink remembers that a table has none until it writes one, and a new
// sink on the file finds those another left.
func TestDuckDBDeleteKeepOpen(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{KeepOpen: true})
	tb, insert := itemsAB()
	mustApply(t, s, insert)
	mustApply(t, s, insert) // no tombstones yet: a replay merges
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	mustApply(t, s, insert) // the same sink: the row stays deleted
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")

	s2 := e.sink(t, Config{KeepOpen: true})
	mustApply(t, s2, insert) // a new sink: it finds the tombstone
	mustApply(t, s2, batch(tb, drow(tb, change.OpCreate, 6, `3`, `"c"`)))
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b", "3|c")
}

// TestDuckDBDeleteBetweenOpens checks that a sink which closes the file
// between batches looks for tombstones again after each open: another
// sink may have deleted a row meanwhile.
func TestDuckDBDeleteBetweenOpens(t *testing.T) {
	e := newDuckEnv(t)
	a, b := e.sink(t, Config{}), e.sink(t, Config{})
	tb, insert := itemsAB()
	mustApply(t, a, insert) // a finds no tombstones
	mustApply(t, b, batch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	mustApply(t, a, insert) // a replay: row 1 stays deleted
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "2|b")
}

func TestDuckDBTruncate(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb, insert := itemsAB()
	mustApply(t, s, insert)
	tr := batch(tb, drow(tb, change.OpCreate, 6, `1`, `"after"`))
	tr.Truncate = dord(5)
	mustApply(t, s, tr)
	e.expect(t, "SELECT id, name FROM public.items ORDER BY id", "1|after")
	e.expect(t, "SELECT key, position FROM public._tideline_tombstones", "*|"+string(dord(5)))

	mustApply(t, s, insert) // older than the truncate: stays gone
	mustApply(t, s, tr)
	e.expect(t, "SELECT id, name, _tideline_position FROM public.items ORDER BY id", "1|after|"+string(dord(6)))
}

func TestDuckDBSoftDelete(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{SoftDelete: true})
	tb, insert := itemsAB()
	mustApply(t, s, insert)
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 5, `1`, ``)))
	q := "SELECT id, name, _tideline_op, _tideline_deleted FROM public.items ORDER BY id"
	e.expect(t, q, "1|a|d|true", "2|b|c|false")
	mustApply(t, s, insert) // older: the row stays deleted
	e.expect(t, q, "1|a|d|true", "2|b|c|false")

	// Row 2 is marked by the truncate and then updated, in one
	// transaction.
	tr := batch(tb, drow(tb, change.OpCreate, 7, `3`, `"c"`), drow(tb, change.OpUpdate, 8, `2`, `"b2"`))
	tr.Truncate = dord(6)
	mustApply(t, s, tr)
	e.expect(t, q, "1|a|t|true", "2|b2|u|false", "3|c|c|false")
	e.expect(t, "SELECT count(*) FROM public._tideline_tombstones WHERE key <> '*'", "0")
}

func TestDuckDBAbsentValues(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("docs", key(col("id", change.Int32, "int4")), col("body", change.String, "text"),
		col("blob", change.Bytes, "bytea"), col("n", change.Int32, "int4"))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`, `"big"`, `"AAE="`, `1`)))
	// An unchanged TOASTed value: the marker, or no value at all.
	mustApply(t, s, batch(tb,
		drow(tb, change.OpUpdate, 2, `1`, `"`+change.UnavailableMarker+`"`, ``, `2`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs", `1|big|\x00\x01|2`)
	// JSON null is SQL NULL, unlike an absent value.
	mustApply(t, s, batch(tb, drow(tb, change.OpUpdate, 3, `1`, `null`, ``, `3`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs", `1|NULL|\x00\x01|3`)

	// Rows carrying different columns in one batch.
	mustApply(t, s, batch(tb,
		drow(tb, change.OpUpdate, 4, `1`, `"b"`, ``, `4`),
		drow(tb, change.OpCreate, 4, `2`, `"c"`, `"AAI="`, `5`),
		drow(tb, change.OpCreate, 4, `3`, ``, ``, `6`)))
	e.expect(t, "SELECT id, body, blob, n FROM public.docs ORDER BY id", `1|b|\x00\x01|4`, `2|c|\x00\x02|5`, `3|NULL|NULL|6`)
}

func TestDuckDBLargeBatch(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := itemsTable()
	const n = 5000 // more than one vector of tideline_rows (2048 rows)
	var rows []apply.Row
	for i := range n {
		rows = append(rows, drow(tb, change.OpCreate, i+1, fmt.Sprint(i), fmt.Sprintf(`"n%d"`, i)))
	}
	mustApply(t, s, batch(tb, rows...))
	for i := range rows {
		if i%2 == 0 {
			rows[i] = drow(tb, change.OpDelete, n+i+1, fmt.Sprint(i), ``)
		}
	}
	mustApply(t, s, batch(tb, rows...))
	e.expect(t, "SELECT count(*), min(id), max(name) FROM public.items", fmt.Sprintf("%d|1|n999", n/2))
	e.expect(t, "SELECT count(*) FROM public._tideline_tombstones", fmt.Sprint(n/2))
}

func TestDuckDBTableDroppedBetweenBatches(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", key(col("id", change.Int32, "int4")), col("name", change.String, "text"))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	c, err := duckdb.NewConnector(e.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	if _, err := db.Exec("DROP TABLE public.items"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 2, `2`, `"b"`)))
	e.expect(t, "SELECT id, name FROM public.items", "2|b")
}

func TestDuckDBEvolve(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	v1 := dtable("items", key(col("id", change.Int32, "int4")), col("qty", change.Int16, "int2"),
		col("price", change.Float32, "float4"))
	mustApply(t, s, batch(v1, drow(v1, change.OpCreate, 1, `1`, `5`, `1.5`)))

	// The source added a column and widened the others, key included.
	v2 := dtable("items", key(col("id", change.Int64, "int8")), col("qty", change.Int32, "int4"),
		col("price", change.Float64, "float8"), col("note", change.String, "text"))
	mustApply(t, s, batch(v2, drow(v2, change.OpCreate, 2, `2`, `70000`, `0.1`, `"hi"`)))
	e.expect(t, "SELECT id, qty, price, note FROM public.items ORDER BY id", "1|5|1.5|NULL", "2|70000|0.1|hi")
	// DuckDB cannot retype a primary-key column: it stays INTEGER (with a
	// warning), and values that fit still apply.
	e.expect(t, `SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name IN ('id', 'qty', 'price', 'note') ORDER BY ordinal_position`,
		"id|INTEGER", "qty|INTEGER", "price|DOUBLE", "note|VARCHAR")

	// A later batch of the old shape still applies.
	mustApply(t, s, batch(v1, drow(v1, change.OpUpdate, 3, `1`, `6`, `2.5`)))
	e.expect(t, "SELECT id, qty, price, note FROM public.items ORDER BY id", "1|6|2.5|NULL", "2|70000|0.1|hi")

	// A signed column whose source became unsigned goes to HUGEINT.
	v3 := dtable("items", key(col("id", change.Int64, "int8")), col("qty", change.Uint64, "bigint unsigned"),
		col("price", change.Float64, "float8"), col("note", change.String, "text"))
	mustApply(t, s, batch(v3, drow(v3, change.OpUpdate, 4, `2`, `18446744073709551615`, `0.1`, `"hi"`)))
	e.expect(t, "SELECT qty FROM public.items ORDER BY id", "6", "18446744073709551615")
	e.expect(t, `SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'qty'`, "HUGEINT")
}

func TestDuckDBBadValues(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", key(col("id", change.Int32, "int4")), col("qty", change.Int16, "int2"),
		col("j", change.JSON, "json"))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`, `1`, `"{}"`)))

	// A string for an integer column: found in Go, that row's fault.
	err := s.Apply(context.Background(), batch(tb,
		drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`),
		drow(tb, change.OpCreate, 3, `3`, `"abc"`, `"{}"`)))
	var re *apply.RowError
	if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "qty") {
		t.Fatalf("got %v, want a RowError for row 1, column qty", err)
	}
	// Text that is not UTF-8 (DuckDB's VARCHAR must be; arrays pass as
	// their JSON text): that row's fault too.
	arr := dtable("arrays", key(col("id", change.Int32, "int4")), col("a", change.Array, "text[]"))
	err = s.Apply(context.Background(), batch(arr,
		drow(arr, change.OpCreate, 2, `2`, `["x"]`),
		drow(arr, change.OpCreate, 3, `3`, "[\"\xff\"]")))
	if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "column a: not valid UTF-8") {
		t.Fatalf("got %v, want a RowError for row 1, column a", err)
	}

	// Values only DuckDB rejects: permanent, and nothing of the batch is
	// written.
	for _, bad := range []apply.Row{
		drow(tb, change.OpCreate, 3, `3`, `70000`, `"{}"`),
		drow(tb, change.OpCreate, 3, `3`, `1`, `"{not json"`),
	} {
		err = s.Apply(context.Background(), batch(tb, drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`), bad))
		if err == nil || !apply.IsPermanent(err) {
			t.Fatalf("got %v, want a permanent error", err)
		}
	}
	e.expect(t, "SELECT id, qty FROM public.items ORDER BY id", "1|1")

	// Rows apart, the good one applies.
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 2, `2`, `2`, `"{}"`)))
	e.expect(t, "SELECT id, qty FROM public.items ORDER BY id", "1|1", "2|2")
}

func TestDuckDBNoKey(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("log", col("msg", change.String, "text"))
	err := s.Apply(context.Background(), batch(tb, drow(tb, change.OpCreate, 1, `"x"`)))
	var rej *apply.RejectError
	if !errors.As(err, &rej) {
		t.Fatalf("got %v, want a RejectError", err)
	}
	if _, err := os.Stat(e.path); err == nil {
		t.Error("a rejected batch opened the database")
	}
}

// TestDuckDBMissingKey applies a batch with a change that lacks its key:
// that row is rejected, not the batch.
func TestDuckDBMissingKey(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", col("name", change.String, "text"), key(col("id", change.Int32, "int4")))
	good := drow(tb, change.OpCreate, 1, `"a"`, `1`)
	mustApply(t, s, batch(tb, good))
	for _, bad := range []apply.Row{
		drow(tb, change.OpDelete, 2, ``, ``),
		drow(tb, change.OpUpdate, 2, `"b"`, `"`+change.UnavailableMarker+`"`),
	} {
		err := s.Apply(context.Background(), batch(tb, drow(tb, change.OpUpdate, 2, `"a2"`, `1`), bad))
		var re *apply.RowError
		if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "key column id") {
			t.Errorf("got %v, want a RowError for row 1, naming column id", err)
		}
	}
	e.expect(t, "SELECT id, name FROM public.items", "1|a")
}

func TestDuckDBTableFormat(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{TableFormat: "{db}_{table}"})
	tb := dtable("items", key(col("id", change.Int32, "int4")))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`)))
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 2, `1`)))
	e.expect(t, "SELECT count(*) FROM main.app_items", "0")
	e.expect(t, "SELECT table_name FROM main._tideline_tombstones", "app_items")
}

func TestDuckDBCanceled(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", key(col("id", change.Int32, "int4")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Apply(ctx, batch(tb, drow(tb, change.OpCreate, 1, `1`))); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestDuckDBQueryBetweenBatches(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", key(col("id", change.Int32, "int4")), col("name", change.String, "text"))
	ctx := context.Background()
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	var out bytes.Buffer
	if err := QueryDuckDB(ctx, e.path, "SELECT id, name FROM public.items ORDER BY id", &out); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 2, `2`, `"bé\nc"`), drow(tb, change.OpCreate, 2, `3`, `null`)))
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
	tb := dtable("items", key(col("id", change.Int32, "int4")), col("name", change.String, "text"))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`)))
	mustApply(t, s, batch(tb, drow(tb, change.OpDelete, 2, `1`, `"a"`), drow(tb, change.OpCreate, 3, `2`, `"b"`)))
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
// waits for it instead of failing. The helper holds the file until its
// stdin is closed, which the test does only once the query is waiting.
func TestDuckDBQueryWaitsForWriter(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("items", key(col("id", change.Int32, "int4")))
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 1, `1`)))

	cmd := exec.Command(os.Args[0], "-test.run=^TestDuckDBHoldHelper$")
	cmd.Env = append(os.Environ(), "TIDELINE_DUCKDB_HOLD="+e.path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	release := sync.OnceFunc(func() { stdin.Close() })
	t.Cleanup(func() {
		release()
		cmd.Wait() //nolint:errcheck // checked below when the test gets there
	})
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil || line != "holding\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}
	// The writer holds the file until release: a plain read-only open
	// fails.
	if c, err := duckdb.NewConnector(e.path+"?access_mode=READ_ONLY", nil); err == nil {
		c.Close()
		t.Fatal("the helper does not hold the file")
	}
	// The sink cannot open it either: a transient error, retried.
	err = s.Apply(context.Background(), batch(tb, drow(tb, change.OpCreate, 2, `2`)))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "lock") {
		t.Errorf("apply while another process holds the file: got %v, want a transient lock error", err)
	}

	// The query finds the file locked and waits; only then is it
	// released.
	waiting := make(chan struct{})
	signal := sync.OnceFunc(func() { close(waiting) })
	var res bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- queryDuckDB(context.Background(), e.path, "SELECT count(*) AS n FROM public.items", &res, signal)
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("the query returned while the file was held, without waiting: %v", err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res.String() != "n\n-\n1\n(1 row)\n" {
		t.Errorf("got %q", res.String())
	}
	// Read all the helper said before Wait, which closes the pipe.
	if rest, _ := io.ReadAll(out); !strings.Contains(string(rest), "released") {
		t.Errorf("helper did not release the file: it said %q", rest)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper: %v", err)
	}
}

// TestDuckDBHoldHelper is the process TestDuckDBQueryWaitsForWriter
// starts: it holds the database file open until its stdin is closed.
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
	io.Copy(io.Discard, os.Stdin) //nolint:errcheck // any end of stdin releases the file
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("released")
}

// TestDuckDBAwkwardText writes text that a text format would have to quote
// (commas, quotes, line breaks) and tells an empty string from NULL; the creates
// are inserted directly, then replayed (their keys taken: merged), then
// a newer create of a key the target holds wins.
func TestDuckDBAwkwardText(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{})
	tb := dtable("awkward", key(col("id", change.Int32, "int4")), col("s", change.String, "text"))
	var rows []apply.Row
	for i, v := range awkwardText {
		rows = append(rows, drow(tb, change.OpCreate, 1, fmt.Sprint(i), v))
	}
	rows = append(rows, drow(tb, change.OpCreate, 1, "100", "null"))
	mustApply(t, s, batch(tb, rows...))
	mustApply(t, s, batch(tb, rows...))
	want := func(first string) []string {
		var out []string
		for i, v := range awkwardText {
			var text string
			if err := json.Unmarshal([]byte(v), &text); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				text = first
			}
			out = append(out, fmt.Sprintf("%d|%q", i, text))
		}
		return append(out, `100|NULL`)
	}
	q := "SELECT id, CASE WHEN s IS NULL THEN 'NULL' ELSE '\"' || replace(replace(replace(replace(replace(s, '\\', '\\\\'), '\"', '\\\"'), chr(10), '\\n'), chr(13), '\\r'), chr(9), '\\t') || '\"' END FROM public.awkward ORDER BY id"
	e.expect(t, q, want(`a,b`)...)
	mustApply(t, s, batch(tb, drow(tb, change.OpCreate, 2, "0", `"newer"`)))
	e.expect(t, q, want("newer")...)
}

// TestDuckDBRowsFunction calls tideline_rows as a statement of the sink
// would, and with the arguments only a mistake would give it.
func TestDuckDBRowsFunction(t *testing.T) {
	e := newDuckEnv(t)
	s := e.sink(t, Config{KeepOpen: true})
	tb := itemsTable()
	b := batch(tb, drow(tb, change.OpCreate, 1, `1`, `"a"`), drow(tb, change.OpUpdate, 2, `2`, ``), drow(tb, change.OpDelete, 3, `3`, ``))
	mustApply(t, s, b) // opens the file and registers the function
	rows, err := renderDuck(target{schema: "public", name: "items"}, b, groupByPresence(b.Rows))
	if err != nil {
		t.Fatal(err)
	}
	rows.assign(true, false)
	s.cur = rows
	defer func() { s.cur = nil }()
	ctx := context.Background()
	for q, want := range map[string]string{
		"SELECT string_agg(_k || ':' || c0 || ':' || coalesce(c1, 'NULL'), ' ' ORDER BY _k) FROM " + duckRowsSQL(-1, pickKeys, "_k", "c0", "c1"): `{"id":1}:1:a {"id":2}:2:NULL {"id":3}:3:NULL`,
		"SELECT string_agg(c0 || _op, ' ' ORDER BY c0) FROM " + duckRowsSQL(-1, pickMerge, "c0", "_op"):                                          "2u",
		"SELECT string_agg(c0 || _pos, ' ' ORDER BY c0) FROM " + duckRowsSQL(-1, pickDirect, "c0", "_pos"):                                       "1" + string(dord(1)),
		"SELECT count(*) FROM " + duckRowsSQL(-1, pickDelete, "_k"):                                                                              "1",
	} {
		var got string
		if err := s.conn.QueryRowContext(ctx, q).Scan(&got); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if got != want {
			t.Errorf("%s: got %q, want %q", q, got, want)
		}
	}
	for q, want := range map[string]string{
		"SELECT * FROM " + duckRowsSQL(0, "all", "_k"):    `no pick "all"`,
		"SELECT * FROM " + duckRowsSQL(0, pickKeys, "c9"): `no column "c9"`,
		"SELECT * FROM " + duckRowsSQL(0, pickKeys, "x"):  `no column "x"`,
	} {
		if _, err := s.conn.ExecContext(ctx, q); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", q, err, want)
		}
	}
	s.cur = nil
	if _, err := s.conn.ExecContext(ctx, "SELECT * FROM "+duckRowsSQL(0, pickKeys, "_k")); err == nil || !strings.Contains(err.Error(), "no batch is being applied") {
		t.Errorf("with no batch: got %v", err)
	}
}
