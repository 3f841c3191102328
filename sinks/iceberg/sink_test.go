package icebergsink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/iceberg-go/table"
	"github.com/jackc/pgx/v5"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Tests that call Apply directly, with batches made by hand: each row's
// Kafka records carry the offsets the exactly-once check reads.

const topic = "app.public.items"

func itemsTable(extra ...change.Column) *change.Table {
	return &change.Table{Database: "app", Schema: "public", Name: "items", Topic: topic, HasKey: true,
		Columns: append([]change.Column{
			{Name: "id", Type: "int4", Logical: change.Int32, Key: true},
			{Name: "name", Type: "text", Logical: change.String},
			{Name: "small", Type: "int2", Logical: change.Int16},
		}, extra...)}
}

// batcher makes batches of a table: each row gets the next Kafka offset
// of partition 0 and the next position.
type batcher struct {
	t      *change.Table
	offset int64
	pos    uint64
}

// row makes a row; vals are JSON texts by column name (missing: absent).
func (bt *batcher) row(op change.Op, vals map[string]string) apply.Row {
	bt.pos++
	r := apply.Row{Op: op, Order: fmt.Appendf(nil, "%016x%08x", bt.pos, 1),
		Records: []*kgo.Record{{Topic: bt.t.Topic, Partition: 0, Offset: bt.offset}}}
	bt.offset++
	r.Key = []byte(`{"id":` + vals["id"] + `}`)
	r.Values = make([]json.RawMessage, len(bt.t.Columns))
	for i, c := range bt.t.Columns {
		if v, ok := vals[c.Name]; ok {
			r.Values[i] = json.RawMessage(v)
		}
	}
	return r
}

func (bt *batcher) batch(rows ...apply.Row) *apply.TableBatch {
	return &apply.TableBatch{Table: bt.t, Topic: bt.t.Topic, Rows: rows}
}

func newSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	s, err := New(context.Background(), cfg, zaptest.NewLogger(t))
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

func mustApply(t *testing.T, s *Sink, b *apply.TableBatch) {
	t.Helper()
	if err := s.Apply(context.Background(), b); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// loadTable opens the catalog and loads public.items.
func loadTable(t *testing.T, cfg Config) *table.Table {
	t.Helper()
	cat, closeCat, err := open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeCat()
	tbl, err := cat.LoadTable(context.Background(), table.Identifier{"public", "items"})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// rowsByID reads public.items as id -> column -> text.
func rowsByID(t *testing.T, cfg Config) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, r := range textRowsOf(t, cfg, "public", "items") {
		m := map[string]string{}
		for k, v := range r {
			m[k] = "NULL"
			if v != nil {
				m[k] = *v
			}
		}
		out[m["id"]] = m
	}
	return out
}

// TestTypesReadBack writes every logical type and reads the table back
// with an iceberg-go scan (ScanRows), checking the values and the Iceberg
// schema.
func TestTypesReadBack(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable(
		change.Column{Name: "price", Type: "numeric(10,2)", Logical: change.Decimal},
		change.Column{Name: "big", Type: "numeric", Logical: change.Decimal},
		change.Column{Name: "u", Type: "bigint unsigned", Logical: change.Uint64},
		change.Column{Name: "f", Type: "float8", Logical: change.Float64},
		change.Column{Name: "ok", Type: "bool", Logical: change.Bool},
		change.Column{Name: "raw", Type: "bytea", Logical: change.Bytes},
		change.Column{Name: "doc", Type: "jsonb", Logical: change.JSON},
		change.Column{Name: "tags", Type: "text[]", Logical: change.Array},
		change.Column{Name: "day", Type: "date", Logical: change.Date},
		change.Column{Name: "at", Type: "time", Logical: change.Time},
		change.Column{Name: "ts", Type: "timestamp", Logical: change.Timestamp},
		change.Column{Name: "tstz", Type: "timestamptz", Logical: change.TimestampTZ},
		change.Column{Name: "uid", Type: "uuid", Logical: change.UUID},
	)}
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{
		"id": "1", "name": `"héllo \"x\""`, "small": "-7", "price": `"12.50"`, "big": `"123456789012345678901234567890123456789012.5"`,
		"u": "18446744073709551615", "f": `"NaN"`, "ok": "true", "raw": `"AP8Q"`, "doc": `"{\"a\": 1}"`, "tags": `["x",null]`,
		"day": "20414", "at": "47655123456", "ts": "1795353255654321", "tstz": `"2026-11-22T11:14:15.500000Z"`,
		"uid": `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`,
	})))
	rows, err := ScanRows(context.Background(), cfg, "public", "items")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	r := rows[0]
	want := map[string]any{
		"id": int64(1), "name": `héllo "x"`, "small": int64(-7), "price": "12.50",
		"big": "123456789012345678901234567890123456789012.5", "u": "18446744073709551615", "ok": true,
		"raw": []byte{0x00, 0xff, 0x10}, "doc": `{"a": 1}`, "tags": `["x",null]`,
		"day":  time.Date(2025, 11, 22, 0, 0, 0, 0, time.UTC),
		"at":   13*time.Hour + 14*time.Minute + 15*time.Second + 123456*time.Microsecond,
		"ts":   time.UnixMicro(1795353255654321).UTC(),
		"tstz": time.Date(2026, 11, 22, 11, 14, 15, 500000000, time.UTC),
		"uid":  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", colOp: "c",
	}
	for k, w := range want {
		if got := r[k]; fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", w) {
			t.Errorf("%s = %#v, want %#v", k, got, w)
		}
	}
	if f, ok := r["f"].(float64); !ok || f == f {
		t.Errorf("f = %#v, want NaN", r["f"])
	}
	if r[colPosition] != fmt.Sprintf("%016x%08x", 1, 1) {
		t.Errorf("%s = %v", colPosition, r[colPosition])
	}

	// The Iceberg schema: identifier field id, required; the mapped types.
	tbl := loadTable(t, cfg)
	sc := tbl.Schema()
	if ids := sc.IdentifierFieldIDs; len(ids) != 1 {
		t.Errorf("identifier fields %v, want id's", ids)
	}
	for name, typ := range map[string]string{"id": "int", "small": "int", "price": "decimal(10, 2)", "big": "string",
		"u": "decimal(20, 0)", "day": "date", "at": "time", "ts": "timestamp", "tstz": "timestamptz", "raw": "binary", colAppliedAt: "timestamptz"} {
		f, ok := sc.FindFieldByName(name)
		if !ok || f.Type.String() != typ {
			t.Errorf("column %s: type %v, want %s", name, f.Type, typ)
		}
	}
	if f, _ := sc.FindFieldByName("id"); !f.Required {
		t.Error("key column id is optional")
	}
	if v := tbl.Properties()[table.PropertyFormatVersion]; tbl.Metadata().Version() != 2 {
		t.Errorf("format version %d (property %q), want 2", tbl.Metadata().Version(), v)
	}
}

// TestUpsertAndDeleteInOneCommit checks that a batch of updates, inserts
// and deletes is one snapshot whose scan is the expected table.
func TestUpsertAndDeleteInOneCommit(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	var rows []apply.Row
	for i := 1; i <= 10; i++ {
		rows = append(rows, bt.row(change.OpCreate, map[string]string{"id": fmt.Sprint(i), "name": fmt.Sprintf(`"n%d"`, i), "small": "1"}))
	}
	mustApply(t, s, bt.batch(rows...))
	before := len(loadTable(t, cfg).Metadata().Snapshots())
	mustApply(t, s, bt.batch(
		bt.row(change.OpUpdate, map[string]string{"id": "2", "name": `"two"`, "small": "2"}),
		bt.row(change.OpDelete, map[string]string{"id": "3"}),
		bt.row(change.OpCreate, map[string]string{"id": "11", "name": `"n11"`, "small": "11"}),
		bt.row(change.OpUpdate, map[string]string{"id": "4", "name": `"__debezium_unavailable_value"`, "small": "4"}),
	))
	tbl := loadTable(t, cfg)
	if n := len(tbl.Metadata().Snapshots()); n != before+1 {
		t.Errorf("%d snapshots after the second batch, want %d (one commit)", n, before+1)
	}
	sum := tbl.CurrentSnapshot().Summary.Properties
	if sum["added-equality-delete-files"] != "1" || sum["added-data-files"] != "1" {
		t.Errorf("summary %v: want one equality delete file and one data file", sum)
	}
	got := rowsByID(t, cfg)
	if len(got) != 10 {
		t.Fatalf("%d rows, want 10: %v", len(got), got)
	}
	if _, ok := got["3"]; ok {
		t.Error("row 3 was not deleted")
	}
	if got["2"]["name"] != "two" || got["2"]["small"] != "2" || got["2"][colOp] != "u" {
		t.Errorf("row 2: %v", got["2"])
	}
	if got["4"]["name"] != "n4" || got["4"]["small"] != "4" {
		t.Errorf("row 4 (unchanged TOAST value): %v; want name n4 kept", got["4"])
	}
	if got["11"]["name"] != "n11" || got["1"]["name"] != "n1" {
		t.Errorf("rows 1, 11: %v %v", got["1"], got["11"])
	}
}

// TestReplayChangesNothing applies a batch, then the same records again
// (a crash after the Iceberg commit, before the Kafka commit): no new
// snapshot, the same rows. A batch that overlaps the applied offsets
// applies only its new rows.
func TestReplayChangesNothing(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	first := bt.batch(
		bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`, "small": "1"}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`, "small": "1"}),
		bt.row(change.OpDelete, map[string]string{"id": "3"}),
	)
	mustApply(t, s, first)
	second := bt.batch(bt.row(change.OpUpdate, map[string]string{"id": "1", "name": `"a2"`, "small": "2"}),
		bt.row(change.OpDelete, map[string]string{"id": "2"}))
	mustApply(t, s, second)
	tbl := loadTable(t, cfg)
	snaps := len(tbl.Metadata().Snapshots())
	var offs map[string]int64
	if err := json.Unmarshal([]byte(tbl.CurrentSnapshot().Summary.Properties[propOffsets]), &offs); err != nil || offs[topic+"/0"] != 5 {
		t.Fatalf("summary %s = %v (%v), want {%q: 5}", propOffsets, offs, err, topic+"/0")
	}
	want := rowsByID(t, cfg)

	// The replay: the first batch again (older changes, older offsets),
	// then the second.
	s2 := newSink(t, cfg)
	mustApply(t, s2, first)
	mustApply(t, s2, second)
	if n := len(loadTable(t, cfg).Metadata().Snapshots()); n != snaps {
		t.Errorf("the replay made %d snapshots", n-snaps)
	}
	if got := rowsByID(t, cfg); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the replay changed the table:\n got  %v\n want %v", got, want)
	}

	// Offsets 3 and 4 (applied) and 5 (new) in one batch: only 5 lands.
	bt.offset, bt.pos = 3, 10
	overlap := bt.batch(
		bt.row(change.OpUpdate, map[string]string{"id": "1", "name": `"stale"`, "small": "9"}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"stale"`, "small": "9"}),
		bt.row(change.OpCreate, map[string]string{"id": "5", "name": `"new"`, "small": "5"}),
	)
	mustApply(t, s2, overlap)
	got := rowsByID(t, cfg)
	if got["1"]["name"] != "a2" || got["2"] != nil || got["5"]["name"] != "new" {
		t.Errorf("after the overlapping batch: %v", got)
	}
}

func TestOlderChangeIgnored(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable(), pos: 100}
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"new"`, "small": "1"})))
	bt.pos = 1 // older positions, newer offsets
	mustApply(t, s, bt.batch(bt.row(change.OpUpdate, map[string]string{"id": "1", "name": `"old"`, "small": "1"})))
	mustApply(t, s, bt.batch(bt.row(change.OpDelete, map[string]string{"id": "1"})))
	if got := rowsByID(t, cfg); got["1"]["name"] != "new" {
		t.Errorf("row 1: %v, want name new", got["1"])
	}
}

func TestRowErrors(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	for _, c := range []struct {
		vals map[string]string
		want string
	}{
		{map[string]string{"id": "2", "name": `"x"`, "small": "70000"}, "small"},
		{map[string]string{"name": `"no key"`}, "key column id"},
		{map[string]string{"id": "null", "name": `"null key"`}, "null key"},
		{map[string]string{"id": "2", "name": `"x"`, "small": `"seven"`}, "small"},
	} {
		b := bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`}), bt.row(change.OpCreate, c.vals))
		err := s.Apply(context.Background(), b)
		var re *apply.RowError
		if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want a RowError for row 1 about %s", c.vals, err, c.want)
		}
	}
	keyless := itemsTable()
	keyless.HasKey = false
	keyless.Columns[0].Key = false
	err := s.Apply(context.Background(), &apply.TableBatch{Table: keyless, Topic: topic, Rows: []apply.Row{{Op: change.OpCreate}}})
	var rej *apply.RejectError
	if !errors.As(err, &rej) {
		t.Errorf("keyless table: got %v, want a RejectError", err)
	}
}

func TestSoftDeleteAndTruncate(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir(), SoftDelete: true}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	mustApply(t, s, bt.batch(
		bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`, "small": "1"}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`, "small": "1"}),
		bt.row(change.OpCreate, map[string]string{"id": "3", "name": `"c"`, "small": "1"}),
	))
	mustApply(t, s, bt.batch(bt.row(change.OpDelete, map[string]string{"id": "1"})))
	got := rowsByID(t, cfg)
	if got["1"][colDeleted] != "true" || got["1"]["name"] != "a" || got["1"][colOp] != "d" || got["2"][colDeleted] != "false" {
		t.Errorf("after a soft delete: %v", got)
	}
	// An older change of the deleted key is ignored: the row is its
	// tombstone.
	old := apply.Row{Op: change.OpUpdate, Key: []byte(`{"id":1}`), Order: fmt.Appendf(nil, "%016x%08x", 1, 0),
		Values: []json.RawMessage{json.RawMessage("1"), json.RawMessage(`"zombie"`), nil}, Records: []*kgo.Record{{Topic: topic, Offset: 100}}}
	mustApply(t, s, bt.batch(old))
	if got := rowsByID(t, cfg); got["1"]["name"] != "a" || got["1"][colDeleted] != "true" {
		t.Errorf("an older update revived the deleted row: %v", got["1"])
	}

	bt.offset = 101
	b := bt.batch(bt.row(change.OpCreate, map[string]string{"id": "4", "name": `"d"`, "small": "1"}))
	b.Truncate = fmt.Appendf(nil, "%016x%08x", bt.pos, 0) // just before row 4
	mustApply(t, s, b)
	got = rowsByID(t, cfg)
	if len(got) != 4 || got["2"][colDeleted] != "true" || got["3"][colOp] != "t" || got["4"][colDeleted] != "false" {
		t.Errorf("after a soft truncate: %v", got)
	}
}

func TestHardTruncate(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	mustApply(t, s, bt.batch(
		bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`}),
	))
	b := bt.batch(bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"again"`}))
	b.Truncate = fmt.Appendf(nil, "%016x%08x", bt.pos, 0)
	mustApply(t, s, b)
	got := rowsByID(t, cfg)
	if len(got) != 1 || got["2"]["name"] != "again" {
		t.Errorf("after the truncate: %v, want only 2", got)
	}
	// Replayed, the truncate and the older rows change nothing.
	snaps := len(loadTable(t, cfg).Metadata().Snapshots())
	bt.offset, bt.pos = 0, 0
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`})))
	mustApply(t, s, b)
	if n := len(loadTable(t, cfg).Metadata().Snapshots()); n != snaps {
		t.Errorf("the replay made %d snapshots", n-snaps)
	}
}

func TestColumnAddedAndPromoted(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`, "small": "1"})))
	v2 := itemsTable(change.Column{Name: "qty", Type: "int8", Logical: change.Int64})
	v2.Columns[2].Logical = change.Int64 // small became a bigint
	bt.t = v2
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`, "small": "9000000000", "qty": "5"})))
	got := rowsByID(t, cfg)
	if got["2"]["small"] != "9000000000" || got["2"]["qty"] != "5" || got["1"]["qty"] != "NULL" {
		t.Errorf("rows %v", got)
	}
	if f, _ := loadTable(t, cfg).Schema().FindFieldByName("small"); f.Type.String() != "long" {
		t.Errorf("small is %s, want long", f.Type)
	}
}

// TestCompact writes many small batches, compacts, and checks that the
// files dropped, that the scan is unchanged, and that the sink carries on
// (its offsets survive the rewrite and the expiry).
func TestCompact(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir()}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	for n := range 8 {
		var rows []apply.Row
		for i := 1; i <= 20; i++ {
			id := fmt.Sprint((n*7 + i) % 30)
			if i%9 == 0 {
				rows = append(rows, bt.row(change.OpDelete, map[string]string{"id": id}))
				continue
			}
			rows = append(rows, bt.row(change.OpUpdate, map[string]string{"id": id, "name": fmt.Sprintf(`"v%d"`, n), "small": fmt.Sprint(i)}))
		}
		mustApply(t, s, bt.batch(rows...))
	}
	want := rowsByID(t, cfg)
	for _, r := range want {
		delete(r, colAppliedAt)
	}
	res, err := Compact(context.Background(), cfg, "", CompactOptions{ExpireOlderThan: time.Nanosecond})
	if err != nil {
		t.Fatalf("compact: %v (%+v)", err, res)
	}
	if len(res) != 1 {
		t.Fatalf("results %+v, want one table", res)
	}
	r := res[0]
	t.Logf("compaction: %+v", r)
	if r.Table != "public.items" || r.DataFilesBefore < 8 || r.DataFilesAfter != 1 || r.DeleteFilesBefore == 0 || r.DeleteFilesAfter != 0 || r.SnapshotsExpired == 0 {
		t.Errorf("result %+v: want 8+ data files to 1 and every delete file gone, snapshots expired", r)
	}
	got := rowsByID(t, cfg)
	for _, r := range got {
		delete(r, colAppliedAt)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("compaction changed the table:\n got  %v\n want %v", got, want)
	}
	if n := len(loadTable(t, cfg).Metadata().Snapshots()); n != 1 {
		t.Errorf("%d snapshots after expiry, want 1", n)
	}

	// A replay of an applied offset is still skipped; a new change lands.
	s2 := newSink(t, cfg)
	off := bt.offset
	bt.offset = 0
	mustApply(t, s2, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"replayed"`})))
	bt.offset = off
	mustApply(t, s2, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "100", "name": `"new"`})))
	got = rowsByID(t, cfg)
	if got["1"]["name"] == "replayed" || got["100"]["name"] != "new" || len(got) != len(want)+1 {
		t.Errorf("after compaction: row 1 %v, row 100 %v, %d rows", got["1"], got["100"], len(got))
	}
}

// TestS3Warehouse keeps the warehouse in an in-process S3 (gofakes3).
func TestS3Warehouse(t *testing.T) {
	backend := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	if err := backend.CreateBucket("lake"); err != nil {
		t.Fatal(err)
	}
	pathStyle := true
	checkS3Warehouse(t, S3Config{Endpoint: srv.URL, Region: "us-east-1", AccessKeyID: "key", SecretAccessKey: "secret", PathStyle: &pathStyle})
	list, err := backend.ListBucket("lake", &gofakes3.Prefix{}, gofakes3.ListBucketPage{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, c := range list.Contents {
		keys = append(keys, c.Key)
	}
	sort.Strings(keys)
	var data, meta int
	for _, k := range keys {
		switch {
		case strings.HasPrefix(k, "wh/public.db/items/data/") && strings.HasSuffix(k, ".parquet"):
			data++
		case strings.HasPrefix(k, "wh/public.db/items/metadata/"):
			meta++
		}
	}
	if data < 3 || meta == 0 {
		t.Errorf("bucket holds %d data files and %d metadata files, want 3+ and some: %v", data, meta, keys)
	}
}

// TestCompactEvery has the sink compact its table itself: the file count
// stays bounded and the rows are right.
func TestCompactEvery(t *testing.T) {
	cfg := Config{Name: "s", Warehouse: t.TempDir(), CompactEvery: 10}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	for n := range 25 {
		mustApply(t, s, bt.batch(
			bt.row(change.OpUpdate, map[string]string{"id": "1", "name": fmt.Sprintf(`"v%d"`, n)}),
			bt.row(change.OpCreate, map[string]string{"id": fmt.Sprint(n + 2), "name": `"x"`}),
		))
	}
	data, deletes := fileCounts(loadTable(t, cfg))
	if data > 6 || deletes > 5 {
		t.Errorf("%d data and %d delete files after 25 commits compacted every 10, want at most 6 and 5", data, deletes)
	}
	got := rowsByID(t, cfg)
	if len(got) != 26 || got["1"]["name"] != "v24" {
		t.Errorf("%d rows, row 1 %v; want 26 rows, row 1 v24", len(got), got["1"])
	}
}

// TestPostgresCatalog keeps the catalog in PostgreSQL.
func TestPostgresCatalog(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PGOptions{})
	if err := pg.CreateDB(context.Background(), "catalog"); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "s", Warehouse: t.TempDir(), Catalog: pg.DSN("catalog")}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	mustApply(t, s, bt.batch(bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`})))
	mustApply(t, s, bt.batch(bt.row(change.OpDelete, map[string]string{"id": "1"})))
	if got := rowsByID(t, cfg); len(got) != 1 || got["2"]["name"] != "b" {
		t.Errorf("rows %v, want only 2", got)
	}
	conn, err := pgx.Connect(context.Background(), pg.DSN("catalog"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM iceberg_tables WHERE catalog_name = $1 AND table_namespace = 'public' AND table_name = 'items'", DefaultCatalogName).Scan(&n); err != nil || n != 1 {
		t.Errorf("iceberg_tables rows for public.items: %d (%v), want 1", n, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Warehouse, "catalog.db")); err == nil {
		t.Error("a SQLite catalog was made as well")
	}
}

// TestRealS3Gateway writes an Iceberg table to a warehouse on a real S3
// server process (versitygw, built from the Go module proxy) and scans it
// back.
func TestRealS3Gateway(t *testing.T) {
	gw := testenv.NewS3Gateway(t)
	gw.CreateBucket(t, "lake")
	checkS3Warehouse(t, S3Config{Endpoint: gw.Endpoint, Region: "us-east-1", AccessKeyID: gw.AccessKey, SecretAccessKey: gw.Secret})
}

// checkS3Warehouse applies an upsert and a delete to a table in
// s3://lake/wh through s3 and scans it back.
func checkS3Warehouse(t *testing.T, s3 S3Config) {
	t.Helper()
	cfg := Config{Name: "s", Warehouse: "s3://lake/wh", Catalog: t.TempDir() + "/catalog.db", S3: s3}
	s := newSink(t, cfg)
	bt := &batcher{t: itemsTable()}
	mustApply(t, s, bt.batch(
		bt.row(change.OpCreate, map[string]string{"id": "1", "name": `"a"`}),
		bt.row(change.OpCreate, map[string]string{"id": "2", "name": `"b"`}),
	))
	mustApply(t, s, bt.batch(bt.row(change.OpUpdate, map[string]string{"id": "2", "name": `"b2"`}),
		bt.row(change.OpDelete, map[string]string{"id": "1"})))
	got := rowsByID(t, cfg)
	if len(got) != 1 || got["2"]["name"] != "b2" {
		t.Errorf("rows %v, want only 2 (b2)", got)
	}
	if tbl := loadTable(t, cfg); !strings.HasPrefix(tbl.Location(), "s3://lake/wh/") {
		t.Errorf("table location %s", tbl.Location())
	}
}
