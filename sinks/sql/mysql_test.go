package sqlsink

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/sinks/sinktest"
)

func TestMySQLDSN(t *testing.T) {
	c, err := mysqlConfig("mysql://u:p%40ss@db.example:3307/shop?tls=skip-verify")
	if err != nil {
		t.Fatal(err)
	}
	if c.User != "u" || c.Passwd != "p@ss" || c.Addr != "db.example:3307" || c.DBName != "shop" ||
		c.TLS == nil || !c.TLS.InsecureSkipVerify || !c.InterpolateParams || c.ParseTime || c.MultiStatements {
		t.Errorf("config = %+v", c)
	}
	if c.Params["time_zone"] != "'+00:00'" || !strings.Contains(c.Params["sql_mode"], "STRICT_ALL_TABLES") {
		t.Errorf("params = %v", c.Params)
	}
	c, err = mysqlConfig("mysql://u@h/d?tls=true")
	if err != nil || c.Addr != "h:3306" || c.TLS == nil || c.TLS.ServerName != "h" || c.TLS.InsecureSkipVerify {
		t.Errorf("tls=true: %+v, %v", c, err)
	}
	for _, bad := range []string{"postgres://u@h/d", "mysql:///d", "mysql://u@h/d?tls=maybe", "mysql://u@h/d?tls_ca=x", "mysql://u@h/d?charset=latin1", "mysql://u@h:99999/d"} {
		if _, err := mysqlConfig(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if _, err := NewMySQL(context.Background(), Config{Name: "x", DSN: "mysql://u@h/"}, zaptest.NewLogger(t)); err == nil {
		t.Error("no database and no schema in table_format: no error")
	}
}

func TestMySQLChunks(t *testing.T) {
	rows := make([]myRow, 10)
	idx := make([]int, 10)
	for i := range rows {
		idx[i], rows[i].size = i, 10
	}
	rows[4].size = myMaxBytes + 1 // alone in its statement
	got := myChunks(idx, myMaxParams/3, rows)
	want := [][]int{{0, 1, 2}, {3}, {4}, {5, 6, 7}, {8, 9}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("chunks = %v, want %v", got, want)
	}
	if got := myChunks(idx[:3], 1, rows); len(got) != 1 {
		t.Errorf("3 small rows in %d statements", len(got))
	}
	if got := myChunks(nil, 1, rows); len(got) != 0 {
		t.Errorf("no rows: %v", got)
	}
}

// myEnv is one MariaDB server shared by the subtests; each subtest writes
// to its own database.
type myEnv struct {
	port int
	db   *sql.DB
}

func TestMySQL(t *testing.T) {
	m := testenv.NewMariaDB(t, testenv.MariaDBOptions{})
	db, err := sql.Open("mysql", m.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &myEnv{port: m.Port(), db: db}
	t.Run("Types", e.testTypes)
	t.Run("Keys", e.testKeys)
	t.Run("Replay", e.testReplay)
	t.Run("Delete", e.testDelete)
	t.Run("Truncate", e.testTruncate)
	t.Run("SoftDelete", e.testSoftDelete)
	t.Run("Absent", e.testAbsent)
	t.Run("Evolve", e.testEvolve)
	t.Run("BadValues", e.testBadValues)
	t.Run("NoKey", e.testNoKey)
	t.Run("MissingKey", e.testMissingKey)
	t.Run("Chunks", e.testChunks)
	t.Run("BigBatch", e.testBigBatch)
	t.Run("DirectLoad", e.testDirectLoad)
	t.Run("LoadRefused", e.testLoadRefused)
	t.Run("TableFormat", e.testTableFormat)
	t.Run("Conformance", e.testConformance)
}

// testConformance runs the sink suite: the real runtime, fed through
// Kafka.
func (e *myEnv) testConformance(t *testing.T) {
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	if _, err := e.db.Exec("CREATE DATABASE " + myIdent(name)); err != nil {
		t.Fatal(err)
	}
	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) apply.Sink {
			dsn := fmt.Sprintf("mysql://root@127.0.0.1:%d/%s", e.port, name)
			s, err := NewMySQL(context.Background(), Config{Name: "s", Type: "mysql", DSN: dsn}, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Rows: func(t *testing.T, _, table string) []map[string]*string {
			return mapRows(t, e.db, "SELECT * FROM "+myIdent(name)+"."+myIdent(table))
		},
	})
}

// sink makes a sink writing to a new database named after the test.
func (e *myEnv) sink(t *testing.T, cfg Config) (*MySQL, string) {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	if _, err := e.db.Exec("CREATE DATABASE " + myIdent(name)); err != nil {
		t.Fatal(err)
	}
	cfg.Name, cfg.Type = "test", "mysql"
	if cfg.DSN == "" {
		cfg.DSN = fmt.Sprintf("mysql://root@127.0.0.1:%d/%s", e.port, name)
	}
	s, err := NewMySQL(context.Background(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, name
}

// query returns the rows of q as text, "NULL" for NULL.
func (e *myEnv) query(t *testing.T, q string, args ...any) [][]string {
	t.Helper()
	return textRows(t, e.db, q, args...)
}

// expect checks q's rows, rendered one per line with | between values.
func (e *myEnv) expect(t *testing.T, q string, want ...string) {
	t.Helper()
	expectRows(t, e.query(t, q), q, want...)
}

func mtable(name string, cols ...change.Column) *change.Table {
	return table("src", "", "t."+name, name, cols...)
}

// mord is a change's Order.
func mord(n int) string { return hexOrder(n, 32) }

// mrow builds a change of t; vals are JSON values aligned with t.Columns,
// "" for absent.
func mrow(t *change.Table, op change.Op, order int, vals ...string) apply.Row {
	return row(t, op, []byte(mord(order)), vals...)
}

func (e *myEnv) testTypes(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("types",
		key(col("id", change.Int64, "bigint")),
		col("i16", change.Int16, "smallint"),
		col("i32", change.Int32, "int"),
		col("i64", change.Int64, "bigint"),
		col("u64", change.Uint64, "bigint unsigned"),
		col("dec", change.Decimal, "decimal(30,10)"),
		col("num", change.Decimal, "numeric"),
		col("f32", change.Float32, "real"),
		col("f64", change.Float64, "double precision"),
		col("b", change.Bool, "boolean"),
		col("s", change.String, "text"),
		col("bin", change.Bytes, "bytea"),
		col("j", change.JSON, "jsonb"),
		col("arr", change.Array, "_int4"),
		col("u", change.UUID, "uuid"),
		col("d", change.Date, "date"),
		col("tm", change.Time, "time"),
		col("ts", change.Timestamp, "timestamp"),
		col("tstz", change.TimestampTZ, "timestamptz"),
		col("ttz", change.TimeTZ, "timetz"),
		col("iv", change.Interval, "interval"),
	)
	full := mrow(tb, change.OpCreate, 10, "1", "-32768", "2147483647", "-9223372036854775808", "18446744073709551615",
		`"12345678901234567890.0123456789"`, `"1.5"`, "1.5", "-3.25e+100", "true", `"héllo ' \\ \" 😀"`, `"AP8Q"`,
		`"{\"a\": [1, 2.5]}"`, "[1,null,3]", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "20414", "47655123456",
		"1795353255654321", `"2026-11-22T11:14:15.500000Z"`, `"23:00:00.000000Z"`, `"P1Y2M3DT4H5M6.5S"`)
	nulls := []string{"2"}
	for range tb.Columns[1:] {
		nulls = append(nulls, "null")
	}
	neg := mrow(tb, change.OpRead, 11, "3", "0", "0", "0", "0", `"-0.5"`, "-7", "0", `"1e-300"`, "false", `""`, `""`,
		`"[]"`, "[]", `"00000000-0000-0000-0000-000000000000"`, "-1", "-3723500000", "-1", `"1969-12-31T23:59:59.999999Z"`, `"00:00:00Z"`, `"PT0S"`)
	loads, inserts := e.status(t, "Com_load"), e.status(t, "Com_insert")
	mustApply(t, s, batch(tb, full, mrow(tb, change.OpCreate, 10, nulls...), neg))
	// Every type loads without a warning: no INSERT after the load.
	if l, i := e.status(t, "Com_load")-loads, e.status(t, "Com_insert")-inserts; l != 1 || i != 0 {
		t.Errorf("%d LOAD DATA and %d INSERT statements, want 1 and 0", l, i)
	}

	ts := time.UnixMicro(1795353255654321).UTC().Format("2006-01-02 15:04:05.000000")
	e.expect(t, "SELECT id, i16, i32, i64, u64, `dec`, num, f32, f64, b, s, HEX(bin), JSON_EXTRACT(j, '$.a[1]'), JSON_LENGTH(arr), u, d, tm, ts, tstz, ttz, iv, _tideline_op, _tideline_position FROM "+db+".types ORDER BY id",
		"1|-32768|2147483647|-9223372036854775808|18446744073709551615|12345678901234567890.0123456789|1.500000000000000000000000000000|1.5|-3.25e+100|1|héllo ' \\ \" 😀|00FF10|2.5|3|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|2025-11-22|13:14:15.123456|"+ts+"|2026-11-22 11:14:15.500000|23:00:00.000000Z|P1Y2M3DT4H5M6.5S|c|"+mord(10),
		"2|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|c|"+mord(10),
		"3|0|0|0|0|-0.5000000000|-7.000000000000000000000000000000|0|1e-300|0|||NULL|0|00000000-0000-0000-0000-000000000000|1969-12-31|-01:02:03.500000|1969-12-31 23:59:59.999999|1969-12-31 23:59:59.999999|00:00:00Z|PT0S|r|"+mord(11),
	)
	e.expect(t, "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '"+db+"' AND TABLE_NAME = 'types' AND COLUMN_NAME IN ('id', 'i16', 'u64', 'dec', 'num', 'b', 'bin', 'ts', 'tstz', 'tm', '_tideline_position', '_tideline_applied_at') ORDER BY ORDINAL_POSITION",
		"id|bigint(20)|NO", "i16|smallint(6)|YES", "u64|bigint(20) unsigned|YES", "dec|decimal(30,10)|YES", "num|decimal(65,30)|YES",
		"b|tinyint(1)|YES", "bin|longblob|YES", "tm|time(6)|YES", "ts|datetime(6)|YES", "tstz|datetime(6)|YES",
		"_tideline_position|varchar(40)|NO", "_tideline_applied_at|datetime(6)|NO")
	// _tideline_applied_at is UTC now.
	e.expect(t, "SELECT ABS(TIMESTAMPDIFF(MINUTE, _tideline_applied_at, UTC_TIMESTAMP(6))) < 30 FROM "+db+".types WHERE id = 1", "1")
	// The sink's sessions.
	var mode, tz, cs string
	if err := s.db.QueryRow("SELECT @@SESSION.sql_mode, @@SESSION.time_zone, @@SESSION.character_set_connection").Scan(&mode, &tz, &cs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mode, "STRICT_ALL_TABLES") || tz != "+00:00" || cs != "utf8mb4" {
		t.Errorf("session: sql_mode %s, time_zone %s, character set %s", mode, tz, cs)
	}
	e.expect(t, "SELECT COUNT(*) FROM "+db+"._tideline_tombstones", "0")
}

// testKeys checks that key values the source tells apart stay apart and
// that deletes match them exactly: text keys differing in case or trailing
// spaces, bigints beyond a double's precision, decimals, bytes and
// date-times.
func (e *myEnv) testKeys(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("keys",
		key(col("s", change.String, "varchar(20)")),
		key(col("n", change.Int64, "bigint")),
		key(col("x", change.Decimal, "numeric(30,20)")),
		key(col("bin", change.Bytes, "bytea")),
		key(col("ts", change.Timestamp, "timestamp")),
		key(col("d", change.Date, "date")),
		col("v", change.Int32, "int"),
	)
	base := []string{`"a"`, "9007199254740993", `"0.10000000000000000001"`, `"AAE="`, "1000001", "1"}
	variants := [][2]any{{-1, ""}, {0, `"A"`}, {0, `"a "`}, {1, "9007199254740992"}, {2, `"0.1"`}, {3, `"AAI="`}, {4, "1000002"}, {5, "2"}}
	var rows []apply.Row
	mk := func(i int, op change.Op, order int) apply.Row {
		vals := slices.Clone(base)
		if at := variants[i][0].(int); at >= 0 {
			vals[at] = variants[i][1].(string)
		}
		return mrow(tb, op, order, append(vals, fmt.Sprint(i))...)
	}
	for i := range variants {
		rows = append(rows, mk(i, change.OpCreate, 10))
	}
	mustApply(t, s, batch(tb, rows...))
	e.expect(t, "SELECT COUNT(*) FROM "+db+".keys", "8")

	// Delete the base row: only it goes.
	mustApply(t, s, batch(tb, mk(0, change.OpDelete, 20)))
	e.expect(t, "SELECT GROUP_CONCAT(v ORDER BY v) FROM "+db+".keys", "1,2,3,4,5,6,7")
	// And then every variant, the base row's replay included.
	rows = rows[:0]
	for i := range variants {
		rows = append(rows, mk(i, change.OpDelete, 30))
	}
	mustApply(t, s, batch(tb, rows...))
	e.expect(t, "SELECT COUNT(*) FROM "+db+".keys", "0")
	e.expect(t, "SELECT COUNT(*) FROM "+db+"._tideline_tombstones WHERE table_name = 'keys' AND position = '"+mord(30)+"'", "8")
}

func (e *myEnv) testReplay(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("replay", key(col("id", change.Int32, "int")), col("v", change.String, "text"))
	older := batch(tb, mrow(tb, change.OpCreate, 10, "1", `"one"`), mrow(tb, change.OpCreate, 10, "2", `"two"`))
	newer := batch(tb, mrow(tb, change.OpUpdate, 20, "1", `"uno"`), mrow(tb, change.OpCreate, 20, "3", `"three"`))
	mustApply(t, s, older)
	mustApply(t, s, newer)
	q := "SELECT id, v, _tideline_op, _tideline_position, _tideline_applied_at FROM " + db + ".replay ORDER BY id"
	want := e.query(t, q)
	if len(want) != 3 || want[0][1] != "uno" || want[0][2] != "u" || want[0][3] != mord(20) {
		t.Fatalf("after both batches: %q", want)
	}
	time.Sleep(10 * time.Millisecond) // a rewrite would show in _tideline_applied_at
	mustApply(t, s, newer)
	mustApply(t, s, older)
	mustApply(t, s, batch(tb, mrow(tb, change.OpUpdate, 15, "1", `"stale"`), mrow(tb, change.OpUpdate, 20, "2", `"dos"`)))
	got := e.query(t, q)
	want[1][1], want[1][2], want[1][3] = "dos", "u", mord(20)
	got[1][4] = want[1][4] // row 2 was rewritten on purpose
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("replays changed the table:\ngot  %q\nwant %q", got, want)
	}
}

// testBigBatch writes batches big enough for two transactions: creates,
// then updates, deletes and older (ignored) changes of the same keys in
// two presence groups, then the first batch again.
func (e *myEnv) testBigBatch(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("big", key(col("id", change.Int32, "int")), col("a", change.Int32, "int"), col("b", change.Int32, "int"))
	const n = 2 * parallelRows
	var creates, changes []apply.Row
	for i := range n {
		v := fmt.Sprint(i)
		creates = append(creates, mrow(tb, change.OpCreate, 10, v, v, v))
		switch i % 4 {
		case 0:
			changes = append(changes, mrow(tb, change.OpUpdate, 20, v, fmt.Sprint(i+100000), ""))
		case 1:
			changes = append(changes, mrow(tb, change.OpUpdate, 20, v, v, fmt.Sprint(i+100000)))
		case 2:
			changes = append(changes, mrow(tb, change.OpDelete, 20, v, "", ""))
		case 3:
			changes = append(changes, mrow(tb, change.OpUpdate, 5, v, "-1", "-1"))
		}
	}
	mustApply(t, s, batch(tb, creates...))
	mustApply(t, s, batch(tb, changes...))
	mustApply(t, s, batch(tb, creates...))
	e.expect(t, "SELECT COUNT(*), SUM(CASE id % 4 WHEN 0 THEN a = id + 100000 AND b = id WHEN 1 THEN a = id AND b = id + 100000 ELSE a = id AND b = id END) FROM "+db+".big",
		fmt.Sprintf("%d|%d", 3*n/4, 3*n/4))
	e.expect(t, "SELECT COUNT(*) FROM "+db+"._tideline_tombstones", fmt.Sprint(n/4))
}

func (e *myEnv) testDelete(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("del", key(col("id", change.Int64, "bigint")), col("v", change.String, "text"))
	insert := batch(tb, mrow(tb, change.OpCreate, 10, "1", `"a"`), mrow(tb, change.OpCreate, 10, "2", `"b"`))
	mustApply(t, s, insert)
	// The before image of a delete may carry only the key.
	mustApply(t, s, batch(tb, mrow(tb, change.OpDelete, 20, "1", "")))
	e.expect(t, "SELECT id FROM "+db+".del", "2")
	e.expect(t, "SELECT table_name, `key`, position FROM "+db+"._tideline_tombstones", `del|{"id":1}|`+mord(20))
	// Replaying the insert does not bring the row back.
	mustApply(t, s, insert)
	e.expect(t, "SELECT id, v FROM "+db+".del", "2|b")
	// A new insert does, and a replayed older delete leaves it.
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 30, "1", `"again"`)))
	mustApply(t, s, batch(tb, mrow(tb, change.OpDelete, 25, "1", `"a"`)))
	e.expect(t, "SELECT id, v, _tideline_position FROM "+db+".del ORDER BY id", "1|again|"+mord(30), "2|b|"+mord(10))
	e.expect(t, "SELECT position FROM "+db+"._tideline_tombstones", mord(25))
	// A delete of a key the target never had leaves a tombstone too.
	mustApply(t, s, batch(tb, mrow(tb, change.OpDelete, 40, "9", `"z"`)))
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 35, "9", `"z"`)))
	e.expect(t, "SELECT COUNT(*) FROM "+db+".del WHERE id = 9", "0")
}

func (e *myEnv) testTruncate(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("trunc", key(col("id", change.Int32, "int")), col("v", change.String, "text"))
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 10, "1", `"a"`), mrow(tb, change.OpCreate, 20, "2", `"b"`)))
	b := batch(tb, mrow(tb, change.OpCreate, 16, "3", `"c"`))
	b.Truncate = []byte(mord(15))
	mustApply(t, s, b)
	e.expect(t, "SELECT id FROM "+db+".trunc ORDER BY id", "2", "3")
	e.expect(t, "SELECT `key`, position FROM "+db+"._tideline_tombstones", "*|"+mord(15))
	// Changes from before the truncate stay out.
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 10, "1", `"a"`), mrow(tb, change.OpCreate, 12, "4", `"d"`)))
	e.expect(t, "SELECT id FROM "+db+".trunc ORDER BY id", "2", "3")
	// A replayed older truncate does not move the tombstone back.
	b.Truncate = []byte(mord(5))
	b.Rows = nil
	mustApply(t, s, b)
	e.expect(t, "SELECT position FROM "+db+"._tideline_tombstones", mord(15))
}

func (e *myEnv) testSoftDelete(t *testing.T) {
	s, db := e.sink(t, Config{SoftDelete: true})
	tb := mtable("soft", key(col("id", change.Int32, "int")), col("v", change.String, "text"))
	insert := batch(tb, mrow(tb, change.OpCreate, 10, "1", `"a"`), mrow(tb, change.OpCreate, 10, "2", `"b"`))
	mustApply(t, s, insert)
	mustApply(t, s, batch(tb, mrow(tb, change.OpDelete, 20, "1", `"a"`)))
	q := "SELECT id, v, _tideline_op, _tideline_deleted, _tideline_position FROM " + db + ".soft ORDER BY id"
	e.expect(t, q, "1|a|d|1|"+mord(20), "2|b|c|0|"+mord(10))
	mustApply(t, s, insert)
	e.expect(t, q, "1|a|d|1|"+mord(20), "2|b|c|0|"+mord(10))
	e.expect(t, "SELECT COUNT(*) FROM "+db+"._tideline_tombstones", "0")

	b := batch(tb, mrow(tb, change.OpCreate, 40, "1", `"new"`))
	b.Truncate = []byte(mord(30))
	mustApply(t, s, b)
	e.expect(t, q, "1|new|c|0|"+mord(40), "2|b|t|1|"+mord(30))
	mustApply(t, s, insert)
	e.expect(t, q, "1|new|c|0|"+mord(40), "2|b|t|1|"+mord(30))
}

func (e *myEnv) testAbsent(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("absent", key(col("id", change.Int32, "int")),
		col("a", change.String, "text"), col("b", change.String, "text"), col("c", change.Int32, "int"))
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 10, "1", `"x"`, `"y"`, "1"), mrow(tb, change.OpCreate, 10, "2", `"x"`, `"y"`, "1")))
	unavailable := `"` + change.UnavailableMarker + `"`
	// Two presence groups in one batch.
	mustApply(t, s, batch(tb,
		mrow(tb, change.OpUpdate, 20, "1", "", unavailable, "2"),
		mrow(tb, change.OpUpdate, 20, "2", `"x2"`, "null", "")))
	e.expect(t, "SELECT id, a, b, c, _tideline_position FROM "+db+".absent ORDER BY id",
		"1|x|y|2|"+mord(20), "2|x2|NULL|1|"+mord(20))
}

func (e *myEnv) testEvolve(t *testing.T) {
	s, db := e.sink(t, Config{})
	v1 := mtable("evolve", key(col("id", change.Int32, "int")), col("n", change.Int16, "smallint"), col("f", change.Float32, "real"))
	mustApply(t, s, batch(v1, mrow(v1, change.OpCreate, 10, "1", "7", "1.5")))
	v2 := mtable("evolve", key(col("id", change.Int32, "int")), col("n", change.Int32, "int"), col("f", change.Float64, "double precision"),
		col("added", change.String, "text"))
	mustApply(t, s, batch(v2, mrow(v2, change.OpCreate, 20, "2", "100000", "1.0000000001", `"new"`)))
	e.expect(t, "SELECT id, n, f, added FROM "+db+".evolve ORDER BY id", "1|7|1.5|NULL", "2|100000|1.0000000001|new")
	e.expect(t, "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '"+db+"' AND TABLE_NAME = 'evolve' AND COLUMN_NAME IN ('n', 'f', 'added') ORDER BY COLUMN_NAME",
		"added|longtext", "f|double", "n|int(11)")
	// A batch of the older shape (a replay) does not narrow anything.
	mustApply(t, s, batch(v1, mrow(v1, change.OpUpdate, 30, "1", "8", "2.5")))
	e.expect(t, "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '"+db+"' AND TABLE_NAME = 'evolve' AND COLUMN_NAME = 'n'", "int(11)")

	// A column added behind the sink's back is found on the retry.
	if _, err := e.db.Exec("ALTER TABLE " + db + ".evolve DROP COLUMN added"); err != nil {
		t.Fatal(err)
	}
	err := s.Apply(context.Background(), batch(v2, mrow(v2, change.OpUpdate, 40, "2", "1", "1", `"back"`)))
	if err == nil || apply.IsPermanent(err) {
		t.Fatalf("apply to a table that lost a column: %v, want a transient error", err)
	}
	mustApply(t, s, batch(v2, mrow(v2, change.OpUpdate, 40, "2", "1", "1", `"back"`)))
	e.expect(t, "SELECT added FROM "+db+".evolve WHERE id = 2", "back")
}

func (e *myEnv) testBadValues(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("bad", key(col("id", change.Int32, "int")), col("n", change.Int16, "smallint"),
		col("bin", change.Bytes, "bytea"), col("j", change.JSON, "json"), col("f", change.Float32, "real"))
	good := mrow(tb, change.OpCreate, 10, "1", "1", `"AA=="`, `"{}"`, "1")

	// Values the sink cannot convert: that row, before anything is written.
	for _, bad := range [][]string{
		{"2", `"abc"`, "null", "null", "null"},
		{"2", "null", `"not base64!"`, "null", "null"},
		{"2", "null", "null", "null", `"NaN"`},
	} {
		err := s.Apply(context.Background(), batch(tb, good, mrow(tb, change.OpCreate, 10, bad...)))
		var re *apply.RowError
		if !errors.As(err, &re) || re.Index != 1 {
			t.Errorf("%v: got %v, want a RowError for row 1", bad, err)
		} else if !strings.Contains(err.Error(), "bad") {
			t.Errorf("error does not name the table: %v", err)
		}
	}
	// Values the server refuses: the batch, permanently, and nothing of it.
	for _, bad := range [][]string{
		{"2", "70000", "null", "null", "null"},
		{"2", "null", "null", `"{not json"`, "null"},
		{"2", "null", "null", "null", "1e39"},
	} {
		err := s.Apply(context.Background(), batch(tb, good, mrow(tb, change.OpCreate, 10, bad...)))
		var re *apply.RowError
		if err == nil || !apply.IsPermanent(err) || errors.As(err, &re) {
			t.Errorf("%v: got %v, want a permanent error", bad, err)
		}
	}
	e.expect(t, "SELECT COUNT(*) FROM "+db+".bad", "0")
	// The sink still works.
	mustApply(t, s, batch(tb, good))
	e.expect(t, "SELECT id, n FROM "+db+".bad", "1|1")
}

func (e *myEnv) testNoKey(t *testing.T) {
	s, _ := e.sink(t, Config{})
	tb := mtable("nokey", col("v", change.String, "text"))
	err := s.Apply(context.Background(), batch(tb, apply.Row{Op: change.OpCreate, Order: []byte(mord(1)), Values: []json.RawMessage{[]byte(`"x"`)}}))
	var re *apply.RejectError
	if !errors.As(err, &re) || !errors.Is(err, errNoKey) {
		t.Errorf("got %v, want a Reject of errNoKey", err)
	}
}

// testMissingKey applies a batch with a change that lacks its key: that
// row is rejected, not the batch.
func (e *myEnv) testMissingKey(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("nokeyval", col("v", change.String, "text"), key(col("id", change.Int32, "int")))
	good := mrow(tb, change.OpCreate, 10, `"a"`, "1")
	for _, bad := range []apply.Row{
		mrow(tb, change.OpDelete, 10, "", ""),
		mrow(tb, change.OpUpdate, 10, `"b"`, `"`+change.UnavailableMarker+`"`),
	} {
		err := s.Apply(context.Background(), batch(tb, good, bad))
		var re *apply.RowError
		if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "key column id") {
			t.Errorf("got %v, want a RowError for row 1, naming column id", err)
		}
	}
	e.expect(t, "SELECT COUNT(*) FROM "+db+".nokeyval", "0")
	mustApply(t, s, batch(tb, good))
	e.expect(t, "SELECT id, v FROM "+db+".nokeyval", "1|a")
}

func (e *myEnv) testChunks(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("many", key(col("id", change.Int32, "int")), col("v", change.String, "text"))
	const n = 2500
	var ins, del []apply.Row
	for i := range n {
		ins = append(ins, mrow(tb, change.OpCreate, 10, fmt.Sprint(i), `"`+strings.Repeat("x", 2000)+`"`))
		del = append(del, mrow(tb, change.OpDelete, 20, fmt.Sprint(i), ""))
	}
	mustApply(t, s, batch(tb, ins...))
	e.expect(t, "SELECT COUNT(*), SUM(LENGTH(v)) FROM "+db+".many", fmt.Sprint(n)+"|"+fmt.Sprint(n*2000))
	mustApply(t, s, batch(tb, del...))
	mustApply(t, s, batch(tb, ins...))
	e.expect(t, "SELECT COUNT(*) FROM "+db+".many", "0")
	e.expect(t, "SELECT COUNT(*) FROM "+db+"._tideline_tombstones", fmt.Sprint(n))
}

func (e *myEnv) testTableFormat(t *testing.T) {
	s, db := e.sink(t, Config{TableFormat: "{db}_{schema}_x.{table}"})
	tb := mtable("fmt", key(col("id", change.Int32, "int")))
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 10, "1")))
	e.expect(t, "SELECT id FROM src_src_x.fmt", "1")
	e.expect(t, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '"+db+"'", "0")
	mustApply(t, s, batch(tb, mrow(tb, change.OpDelete, 20, "1")))
	e.expect(t, "SELECT `key` FROM src_src_x._tideline_tombstones", `{"id":1}`)
}

// status reads one of the server's global statement counters.
func (e *myEnv) status(t *testing.T, name string) int {
	t.Helper()
	var n string
	var v int
	if err := e.db.QueryRow("SHOW GLOBAL STATUS LIKE '"+name+"'").Scan(&n, &v); err != nil {
		t.Fatalf("status %s: %v", name, err)
	}
	return v
}

// testDirectLoad loads creates straight into the target with LOAD DATA,
// with values its text format must escape (the server's own counter of
// LOAD DATA statements shows the path was taken); applied again, their
// keys are taken and the batch is upserted instead; a newer create of a
// key the target holds wins; a big batch does the same on two
// connections.
func (e *myEnv) testDirectLoad(t *testing.T) {
	s, db := e.sink(t, Config{})
	tb := mtable("direct", key(col("id", change.Int32, "int")), col("s", change.String, "text"),
		col("bin", change.Bytes, "bytea"), col("n", change.Decimal, "numeric(10,2)"), col("ts", change.Timestamp, "timestamp"))
	texts := append(slices.Clone(awkwardText), `"nul\u0000byte"`, `"\\0 \\t \\"`, `"NULL"`, `"\\"`)
	var rows []apply.Row
	for i, v := range texts {
		// Bytes that are the format's separators and escapes: 00 09 0A 0D 5C.
		rows = append(rows, mrow(tb, change.OpCreate, 10, fmt.Sprint(i), v, `"AAkKDVw="`, `"-1.25"`, "1000001"))
	}
	rows = append(rows, mrow(tb, change.OpRead, 10, "100", "null", "null", "null", "null"))
	tg, err := resolveTarget(s.cfg.TableFormat, tb)
	if err != nil {
		t.Fatal(err)
	}
	tg.schema = db
	loads, inserts := e.status(t, "Com_load"), e.status(t, "Com_insert")
	mustApply(t, s, batch(tb, rows...))
	if n := e.status(t, "Com_load") - loads; n != 1 {
		t.Errorf("first batch: %d LOAD DATA statements, want 1", n)
	}
	if n := e.status(t, "Com_insert") - inserts; n != 0 {
		t.Errorf("first batch: %d INSERT statements, want none", n)
	}
	if p := s.tables[tg].pause; p != 0 {
		t.Fatalf("after the first batch the direct path is paused (%d)", p)
	}
	q := "SELECT id, HEX(s), HEX(bin), n, ts, _tideline_op, _tideline_position FROM " + db + ".direct ORDER BY id"
	var want []string
	for i, text := range jsonTexts(t, texts, "") {
		want = append(want, fmt.Sprintf("%d|%X|00090A0D5C|-1.25|1970-01-01 00:00:01.000001|c|%s", i, text, mord(10)))
	}
	want = append(want, "100|NULL|NULL|NULL|NULL|r|"+mord(10))
	e.expect(t, q, want...)
	e.expect(t, "SELECT COUNT(*) FROM "+db+".direct WHERE s = 'NULL'", "1")

	// Applied again: the load finds the keys taken, nothing changes, and
	// the direct path pauses.
	mustApply(t, s, batch(tb, rows...))
	if p := s.tables[tg].pause; p != directPause {
		t.Fatalf("after the replay: pause %d, want %d", p, directPause)
	}
	e.expect(t, q, want...)
	// A newer create of a taken key, with a new key, unpaused: the load
	// finds the key taken, and the upsert writes both.
	s.tables = map[target]*myTable{}
	loads, inserts = e.status(t, "Com_load"), e.status(t, "Com_insert")
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 20, "0", `"newer"`, `"AAkKDVw="`, `"-1.25"`, "1000001"),
		mrow(tb, change.OpCreate, 20, "200", `"new"`, "null", "null", "null")))
	if l, i := e.status(t, "Com_load")-loads, e.status(t, "Com_insert")-inserts; l != 1 || i != 1 {
		t.Errorf("a batch with a taken key: %d LOAD DATA and %d INSERT statements, want 1 and 1", l, i)
	}
	if p := s.tables[tg].pause; p != directPause {
		t.Errorf("after a taken key: pause %d, want %d", p, directPause)
	}
	got := e.query(t, q)
	if got[0][1] != fmt.Sprintf("%X", "newer") || got[0][6] != mord(20) {
		t.Errorf("a newer create of a taken key: %q", got[0])
	}
	e.expect(t, "SELECT COUNT(*) FROM "+db+".direct WHERE id = 200 AND s = 'new'", "1")

	// A big batch, on two connections, half of it replayed.
	rows = rows[:0]
	for i := range 2 * parallelRows {
		rows = append(rows, mrow(tb, change.OpCreate, 30, fmt.Sprint(1000+i), `"big"`, "null", "null", "null"))
	}
	mustApply(t, s, batch(tb, rows[:parallelRows]...))
	s.tables = map[target]*myTable{} // forget the pause: load directly again
	loads, inserts = e.status(t, "Com_load"), e.status(t, "Com_insert")
	mustApply(t, s, batch(tb, rows...))
	// Each half loads; the half of taken keys is upserted instead.
	if l, i := e.status(t, "Com_load")-loads, e.status(t, "Com_insert")-inserts; l != 2 || i < 1 {
		t.Errorf("a big batch: %d LOAD DATA and %d INSERT statements, want 2 and some", l, i)
	}
	if p := s.tables[tg].pause; p != directPause {
		t.Errorf("after a big batch with taken keys: pause %d, want %d", p, directPause)
	}
	e.expect(t, "SELECT COUNT(*), COUNT(DISTINCT id) FROM "+db+".direct WHERE s = 'big'",
		fmt.Sprintf("%d|%d", 2*parallelRows, 2*parallelRows))

	// A load that warns (MariaDB rounds 1.255 to 1.26 with a note) is
	// rolled back and upserted, and the table's next batches skip it.
	rounded := mrow(tb, change.OpCreate, 40, "300", `"r"`, "null", `"1.255"`, "null")
	loads, inserts = e.status(t, "Com_load"), e.status(t, "Com_insert")
	s.tables = map[target]*myTable{}
	mustApply(t, s, batch(tb, rounded))
	if l, i := e.status(t, "Com_load")-loads, e.status(t, "Com_insert")-inserts; l != 1 || i != 1 {
		t.Errorf("a load that warns: %d LOAD DATA and %d INSERT statements, want 1 and 1", l, i)
	}
	if p := s.tables[tg].pause; p != directPause || !s.warned[tg] {
		t.Errorf("after a load that warned: pause %d (want %d), warned %v", p, directPause, s.warned[tg])
	}
	e.expect(t, "SELECT n FROM "+db+".direct WHERE id = 300", "1.26")
}

// testLoadRefused turns local_infile off on the server: the sink writes
// the creates with INSERT instead, and stops trying LOAD DATA.
func (e *myEnv) testLoadRefused(t *testing.T) {
	if _, err := e.db.Exec("SET GLOBAL local_infile = 0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := e.db.Exec("SET GLOBAL local_infile = 1"); err != nil {
			t.Error(err)
		}
	})
	s, db := e.sink(t, Config{})
	tb := mtable("refused", key(col("id", change.Int32, "int")), col("v", change.String, "text"))
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 10, "1", `"one"`), mrow(tb, change.OpCreate, 10, "2", `"two"`)))
	if !s.noLoad.Load() {
		t.Error("the sink did not note that the server refuses LOAD DATA")
	}
	loads := e.status(t, "Com_load")
	mustApply(t, s, batch(tb, mrow(tb, change.OpCreate, 20, "3", `"three"`)))
	if n := e.status(t, "Com_load") - loads; n != 0 {
		t.Errorf("%d LOAD DATA statements after the server refused one", n)
	}
	e.expect(t, "SELECT id, v FROM "+db+".refused ORDER BY id", "1|one", "2|two", "3|three")
}
