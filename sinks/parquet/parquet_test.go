package parquet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // reads the files back: a reader we did not write
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

var allTypes = &change.Table{Schema: "public", Name: "things", Topic: "app.public.things", HasKey: true, Columns: []change.Column{
	{Name: "id", Type: "int8", Logical: change.Int64, Key: true},
	{Name: "small", Type: "int2", Logical: change.Int16},
	{Name: "n", Type: "int4", Logical: change.Int32},
	{Name: "price", Type: "numeric(10,2)", Logical: change.Decimal},
	{Name: "big", Type: "numeric", Logical: change.Decimal},
	{Name: "ratio", Type: "float8", Logical: change.Float64},
	{Name: "ok", Type: "bool", Logical: change.Bool},
	{Name: "name", Type: "text", Logical: change.String},
	{Name: "blob", Type: "bytea", Logical: change.Bytes},
	{Name: "doc", Type: "jsonb", Logical: change.JSON},
	{Name: "uid", Type: "uuid", Logical: change.UUID},
	{Name: "day", Type: "date", Logical: change.Date},
	{Name: "at", Type: "time", Logical: change.Time},
	{Name: "ts", Type: "timestamp", Logical: change.Timestamp},
	{Name: "tstz", Type: "timestamptz", Logical: change.TimestampTZ},
	{Name: "u", Type: "bigint unsigned", Logical: change.Uint64},
}}

// row builds a Row of one change at offset off of partition p.
func row(op change.Op, p int32, off int64, tsMs int64, vals ...string) apply.Row {
	r := apply.Row{Op: op, Order: []byte(fmt.Sprintf("%06x", off)), TsMs: tsMs, TxID: []byte(fmt.Sprint(500 + off)),
		Records: []*kgo.Record{{Topic: "app.public.things", Partition: p, Offset: off, Timestamp: time.UnixMilli(tsMs)}}}
	for _, v := range vals {
		if v == "-" {
			r.Values = append(r.Values, nil)
		} else {
			r.Values = append(r.Values, json.RawMessage(v))
		}
	}
	return r
}

var day1 = time.Date(2026, 11, 22, 23, 59, 0, 0, time.UTC).UnixMilli()

func kv(op change.Op, p int32, off int64, ts int64, id int, name string) apply.Row {
	return row(op, p, off, ts, fmt.Sprint(id), "-", "-", "-", "-", "-", "-", name, "-", "-", "-", "-", "-", "-", "-", "-")
}

func newSink(t *testing.T, dir string) *Sink {
	t.Helper()
	s, err := New(context.Background(), Config{Name: "log", Path: "file://" + dir}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func duck(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// query returns the rows of q as "|"-joined text.
func query(t *testing.T, db *sql.DB, q string) []string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(cols))
		for i, v := range vals {
			parts[i] = "NULL"
			if v.Valid {
				parts[i] = v.String
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestTypesAndMetadataReadByDuckDB writes every logical type and reads the
// file back with DuckDB's read_parquet.
func TestTypesAndMetadataReadByDuckDB(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dir)
	tb := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic, Rows: []apply.Row{
		row(change.OpCreate, 0, 7, day1, `1`, `-3`, `70000`, `"12.34"`, `"123456789012345678901234567890.5"`, `"NaN"`, `true`,
			`"say \"hi\" é"`, `"AAEC"`, `{"a":[1,2]}`, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, `20414`, `3723000001`,
			`1763855999000001`, `"2026-11-22T23:59:59.5Z"`, `18446744073709551615`),
		row(change.OpUpdate, 0, 8, day1, `1`, `"__debezium_unavailable_value"`, `null`, `"0.10"`, `"-1"`, `1.5`, `false`,
			`""`, `""`, `[]`, `null`, `-1`, `0`, `0`, `"1970-01-01T00:00:00Z"`, `0`),
		row(change.OpDelete, 0, 9, day1, `1`, `-3`, `1`, `"0.10"`, `"-1"`, `1.5`, `false`, `"x"`, `""`, `{}`, `null`, `0`, `0`, `0`, `"1970-01-01T00:00:00Z"`, `0`),
		{Op: change.OpTruncate, Order: []byte("00000a"), TsMs: day1, Values: make([]json.RawMessage, len(allTypes.Columns)),
			Records: []*kgo.Record{{Topic: allTypes.Topic, Offset: 10}}},
	}}
	if err := s.Apply(context.Background(), tb); err != nil {
		t.Fatal(err)
	}
	want := []string{"public.things/date=2026-11-22/app.public.things+0+00000000000000000007+00000000000000000010.parquet"}
	if got := files(t, dir); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("files %v, want %v", got, want)
	}
	got := query(t, duck(t), `SELECT id, small, n, price::VARCHAR, big, ratio, ok, name, hex(blob), doc, uid::VARCHAR, day::VARCHAR, "at"::VARCHAR, ts::VARCHAR,
		epoch_us(tstz), u, _tideline_op, _tideline_position, epoch_ms(_tideline_commit_ts), _tideline_txid, date::VARCHAR,
		typeof(price), typeof(day), typeof(tstz), typeof(blob), typeof(u)
		FROM read_parquet('`+Glob("file://"+dir, allTypes)+`', hive_partitioning=true) ORDER BY _tideline_position`)
	meta := fmt.Sprint(day1) + `|%d|2026-11-22|DECIMAL(10,2)|DATE|TIMESTAMP WITH TIME ZONE|BLOB|UBIGINT`
	wantRows := []string{
		`1|-3|70000|12.34|123456789012345678901234567890.5|NaN|true|say "hi" é|000102|{"a":[1,2]}|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|2025-11-22|01:02:03.000001|2025-11-22 23:59:59.000001|1795391999500000|18446744073709551615|c|000007|` + fmt.Sprintf(meta, 507),
		// An unchanged TOASTed value (the marker) is null in the log.
		`1|NULL|NULL|0.10|-1|1.5|false|||[]|NULL|1969-12-31|00:00:00|1970-01-01 00:00:00|0|0|u|000008|` + fmt.Sprintf(meta, 508),
		`1|-3|1|0.10|-1|1.5|false|x||{}|NULL|1970-01-01|00:00:00|1970-01-01 00:00:00|0|0|d|000009|` + fmt.Sprintf(meta, 509),
	}
	truncate := `NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|t|00000a|` + fmt.Sprintf(meta, 0)
	wantRows = append(wantRows, strings.Replace(truncate, "|0|2026", "|NULL|2026", 1))
	if strings.Join(got, "\n") != strings.Join(wantRows, "\n") {
		t.Errorf("DuckDB reads\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRows, "\n"))
	}
}

// TestReplaySkipsWhatIsInTheLake: a restarted sink (nothing in memory)
// given changes that are partly in files already writes only the rest.
func TestReplaySkipsWhatIsInTheLake(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	batch := func(from, to int64) *apply.TableBatch {
		tb := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic}
		for off := from; off <= to; off++ {
			for p := int32(0); p < 2; p++ {
				tb.Rows = append(tb.Rows, kv(change.OpCreate, p, off, day1, int(off)*2+int(p), fmt.Sprintf(`"v%d"`, off)))
			}
		}
		return tb
	}
	if err := newSink(t, dir).Apply(ctx, batch(0, 9)); err != nil {
		t.Fatal(err)
	}
	// A crash: the offsets were not committed, the new sink gets 0..14.
	s := newSink(t, dir)
	if err := s.Apply(ctx, batch(0, 14)); err != nil {
		t.Fatal(err)
	}
	// And the next batch follows on (no listing needed), then a replay of
	// an older stretch within one process.
	if err := s.Apply(ctx, batch(15, 19)); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, batch(12, 19)); err != nil {
		t.Fatal(err)
	}
	want := []string{}
	for p := 0; p < 2; p++ {
		for _, r := range [][2]int{{0, 9}, {10, 14}, {15, 19}} {
			want = append(want, fmt.Sprintf("public.things/date=2026-11-22/app.public.things+%d+%020d+%020d.parquet", p, r[0], r[1]))
		}
	}
	sort.Strings(want)
	if got := files(t, dir); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("files\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got := query(t, duck(t), `SELECT count(*), count(DISTINCT id), min(id), max(id) FROM read_parquet('`+Glob("file://"+dir, allTypes)+`')`)
	if got[0] != "40|40|0|39" {
		t.Errorf("count, distinct ids, min, max = %s; want every change once: 40|40|0|39", got[0])
	}
}

// TestFilesSplitByCommitDay: a partition's changes of two days go to two
// files, each a contiguous run of offsets.
func TestFilesSplitByCommitDay(t *testing.T) {
	dir := t.TempDir()
	day2 := day1 + 120_000
	tb := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic, Rows: []apply.Row{
		kv(change.OpCreate, 1, 3, day1, 1, `"a"`),
		kv(change.OpCreate, 1, 4, day1, 2, `"b"`),
		kv(change.OpUpdate, 1, 5, day2, 1, `"c"`),
		kv(change.OpCreate, 0, 5, 0, 3, `"no commit time"`), // dated by the record's timestamp
	}}
	tb.Rows[3].Records[0].Timestamp = time.UnixMilli(day2)
	if err := newSink(t, dir).Apply(context.Background(), tb); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"public.things/date=2026-11-22/app.public.things+1+00000000000000000003+00000000000000000004.parquet",
		"public.things/date=2026-11-23/app.public.things+0+00000000000000000005+00000000000000000005.parquet",
		"public.things/date=2026-11-23/app.public.things+1+00000000000000000005+00000000000000000005.parquet",
	}
	if got := files(t, dir); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("files\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestBadValueIsARowErrorAndWritesNothing: a value the column type cannot
// hold fails its row before any file of the batch is written.
func TestBadValueIsARowErrorAndWritesNothing(t *testing.T) {
	dir := t.TempDir()
	tb := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic, Rows: []apply.Row{
		kv(change.OpCreate, 0, 1, day1, 1, `"fine"`),
		row(change.OpCreate, 1, 1, day1, `2`, `70000`, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"),
	}}
	err := newSink(t, dir).Apply(context.Background(), tb)
	var re *apply.RowError
	if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "column small") {
		t.Fatalf("got %v, want a RowError for row 1 naming column small", err)
	}
	if got := files(t, dir); len(got) != 0 {
		t.Errorf("files written despite the error: %v", got)
	}
}

// TestAddedColumnInLaterFiles: a column added at the source appears in the
// files written after it; DuckDB reads old and new files together.
func TestAddedColumnInLaterFiles(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dir)
	v1 := &change.Table{Schema: "public", Name: "kv", Topic: "app.public.kv", HasKey: true, Columns: []change.Column{
		{Name: "id", Logical: change.Int64, Key: true}, {Name: "v", Logical: change.String}}}
	v2 := *v1
	v2.Columns = append(append([]change.Column(nil), v1.Columns...), change.Column{Name: "tier", Logical: change.Int32})
	rec := func(off int64) []*kgo.Record {
		return []*kgo.Record{{Topic: v1.Topic, Offset: off}}
	}
	ctx := context.Background()
	if err := s.Apply(ctx, &apply.TableBatch{Table: v1, Topic: v1.Topic, Rows: []apply.Row{
		{Op: change.OpCreate, Order: []byte("01"), TsMs: day1, Values: []json.RawMessage{[]byte(`1`), []byte(`"a"`)}, Records: rec(0)}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, &apply.TableBatch{Table: &v2, Topic: v1.Topic, Rows: []apply.Row{
		{Op: change.OpUpdate, Order: []byte("02"), TsMs: day1, Values: []json.RawMessage{[]byte(`1`), []byte(`"b"`), []byte(`3`)}, Records: rec(1)}}}); err != nil {
		t.Fatal(err)
	}
	got := query(t, duck(t), `SELECT id, v, tier, _tideline_op FROM read_parquet('`+Glob("file://"+dir, v1)+`', union_by_name=true) ORDER BY _tideline_position`)
	if want := "1|a|NULL|c\n1|b|3|u"; strings.Join(got, "\n") != want {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}
}

// TestChangesResentByTheCaptureAreSkipped: after a crash the capture
// re-sends changes Kafka already had (new offsets, old positions). A
// restarted sink knows the newest position written from the file metadata
// and skips them; snapshot rows, which share one position, are all kept.
func TestChangesResentByTheCaptureAreSkipped(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	at := func(op change.Op, off int64, pos string, id int) apply.Row {
		r := kv(op, 0, off, day1, id, `"x"`)
		r.Order = []byte(pos)
		return r
	}
	first := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic, Rows: []apply.Row{
		at(change.OpRead, 0, "0100", 1), at(change.OpRead, 1, "0100", 2), at(change.OpRead, 2, "0100", 3),
		at(change.OpCreate, 3, "0200", 4), at(change.OpUpdate, 4, "0201", 4),
	}}
	if err := newSink(t, dir).Apply(ctx, first); err != nil {
		t.Fatal(err)
	}
	// Restarted: the capture re-sent 0200 and 0201 at offsets 5 and 6,
	// then new changes.
	again := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic, Rows: []apply.Row{
		at(change.OpCreate, 5, "0200", 4), at(change.OpUpdate, 6, "0201", 4), at(change.OpDelete, 7, "0300", 4),
	}}
	if err := newSink(t, dir).Apply(ctx, again); err != nil {
		t.Fatal(err)
	}
	got := query(t, duck(t), `SELECT _tideline_op, id, _tideline_position FROM read_parquet('`+Glob("file://"+dir, allTypes)+`') ORDER BY _tideline_position, id`)
	want := "r|1|0100\nr|2|0100\nr|3|0100\nc|4|0200\nu|4|0201\nd|4|0300"
	if strings.Join(got, "\n") != want {
		t.Errorf("log\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}
	if got := files(t, dir); len(got) != 2 || !strings.HasSuffix(got[1], "+00000000000000000007+00000000000000000007.parquet") {
		t.Errorf("files %v: want the first batch's and one holding offset 7 only", got)
	}
}

// TestDecimalTypes pins which numeric types become Parquet DECIMALs: only
// those with precision and scale, so that files written before keep
// their column types.
func TestDecimalTypes(t *testing.T) {
	for typ, want := range map[string]string{
		"numeric(10,2)":            "decimal(10, 2)",
		"decimal(30, 10) unsigned": "decimal(30, 10)",
		"numeric(10)":              "utf8",
		"numeric":                  "utf8",
		"numeric(40,2)":            "utf8",
	} {
		got, _ := arrowType(change.Column{Name: "n", Type: typ, Logical: change.Decimal})
		if got.String() != want {
			t.Errorf("%s: got %s, want %s", typ, got, want)
		}
	}
}
