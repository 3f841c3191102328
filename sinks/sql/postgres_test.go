package sqlsink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// pgEnv is one PostgreSQL server shared by the subtests; each subtest
// writes to its own schema.
type pgEnv struct {
	dsn  string
	conn *pgx.Conn
}

func TestPostgres(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PGOptions{})
	ctx := context.Background()
	if err := pg.CreateDB(ctx, "warehouse"); err != nil {
		t.Fatal(err)
	}
	e := &pgEnv{dsn: pg.DSN("warehouse")}
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	e.conn = conn
	t.Run("PresenceGroups", e.testPresenceGroups)
	t.Run("BigBatchGroups", e.testBigBatchGroups)
	t.Run("TargetChanged", e.testTargetChanged)
	t.Run("MissingKey", e.testMissingKey)
	t.Run("DirectCopy", e.testDirectCopy)
}

// sink makes a sink and the source table name's schema, named after the
// test.
func (e *pgEnv) sink(t *testing.T) (*Postgres, string) {
	t.Helper()
	s, err := NewPostgres(context.Background(), Config{Name: "test", Type: "postgres", DSN: e.dsn}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
}

// exec runs a statement on the test's own connection.
func (e *pgEnv) exec(t *testing.T, q string) {
	t.Helper()
	if _, err := e.conn.Exec(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// expect checks q's rows, in PostgreSQL's text format, each joined with
// "|" ("NULL" for NULL).
func (e *pgEnv) expect(t *testing.T, q string, want ...string) {
	t.Helper()
	rows, err := e.conn.Query(context.Background(), q, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var got [][]string
	for rows.Next() {
		var r []string
		for _, v := range rows.RawValues() {
			if v == nil {
				r = append(r, "NULL")
			} else {
				r = append(r, string(v))
			}
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	expectRows(t, got, q, want...)
}

// pord is a change's Order.
func pord(n int) []byte { return []byte(hexOrder(n, 24)) }

const unavailableJSON = `"` + change.UnavailableMarker + `"`

// testPresenceGroups writes two groups of one batch that carry the same
// number of columns, but not the same columns, with the key not first:
// each group's statement must read its own rows only.
func (e *pgEnv) testPresenceGroups(t *testing.T) {
	s, schema := e.sink(t)
	tb := table("app", schema, "app."+schema+".groups", "groups",
		col("a", change.Int32, "int4"), key(col("id", change.Int32, "int4")), col("b", change.Int32, "int4"))
	mustApply(t, s, batch(tb,
		row(tb, change.OpCreate, pord(1), "1", "1", "1"),
		row(tb, change.OpCreate, pord(1), "2", "2", "2")))
	mustApply(t, s, batch(tb,
		row(tb, change.OpUpdate, pord(2), "10", "1", unavailableJSON),
		row(tb, change.OpUpdate, pord(2), "", "2", "20")))
	e.expect(t, "SELECT id, a, b, _tideline_position FROM "+schema+".groups ORDER BY id",
		"1|10|1|"+string(pord(2)), "2|2|20|"+string(pord(2)))

	// Deletes too: a group of deletes and one of updates, both carrying
	// two columns.
	mustApply(t, s, batch(tb,
		row(tb, change.OpUpdate, pord(3), "11", "1", ""),
		row(tb, change.OpDelete, pord(3), "", "2", "2")))
	e.expect(t, "SELECT id, a, b FROM "+schema+".groups ORDER BY id", "1|11|1")
	e.expect(t, "SELECT key, position FROM "+schema+"._tideline_tombstones", `{"id":2}|`+string(pord(3)))
}

// testBigBatchGroups writes a batch big enough for two transactions, its
// rows in two groups of the same width.
func (e *pgEnv) testBigBatchGroups(t *testing.T) {
	s, schema := e.sink(t)
	tb := table("app", schema, "app."+schema+".big", "big",
		col("a", change.Int32, "int4"), key(col("id", change.Int32, "int4")), col("b", change.Int32, "int4"))
	const n = 2 * parallelRows
	var rows []apply.Row
	for i := range n {
		v := fmt.Sprint(i)
		rows = append(rows, row(tb, change.OpCreate, pord(1), v, v, v))
	}
	mustApply(t, s, batch(tb, rows...))
	rows = rows[:0]
	for i := range n {
		v, w := fmt.Sprint(i), fmt.Sprint(i+100000)
		if i%3 == 0 {
			rows = append(rows, row(tb, change.OpUpdate, pord(2), w, v, unavailableJSON))
		} else {
			rows = append(rows, row(tb, change.OpUpdate, pord(2), "", v, w))
		}
	}
	mustApply(t, s, batch(tb, rows...))
	e.expect(t, "SELECT count(*), count(*) FILTER (WHERE CASE WHEN id % 3 = 0 THEN a = id + 100000 AND b = id ELSE a = id AND b = id + 100000 END) FROM "+schema+".big",
		fmt.Sprintf("%d|%d", n, n))
}

// testTargetChanged drops a target column, then the target table, behind
// the sink's back: the retry of the failed batch finds out.
func (e *pgEnv) testTargetChanged(t *testing.T) {
	s, schema := e.sink(t)
	tb := table("app", schema, "app."+schema+".evolve", "evolve",
		key(col("id", change.Int32, "int4")), col("n", change.Int32, "int4"), col("added", change.String, "text"))
	mustApply(t, s, batch(tb, row(tb, change.OpCreate, pord(1), "1", "1", `"x"`)))
	q := "SELECT id, n, added FROM " + schema + ".evolve ORDER BY id"

	for _, c := range []struct {
		ddl  string
		b    *apply.TableBatch
		want []string
	}{
		{"ALTER TABLE " + schema + ".evolve DROP COLUMN added",
			batch(tb, row(tb, change.OpUpdate, pord(2), "1", "2", `"back"`)), []string{"1|2|back"}},
		{"DROP TABLE " + schema + ".evolve",
			batch(tb, row(tb, change.OpCreate, pord(3), "2", "3", `"new"`)), []string{"2|3|new"}},
	} {
		e.exec(t, c.ddl)
		err := s.Apply(context.Background(), c.b)
		if err == nil || apply.IsPermanent(err) {
			t.Fatalf("after %s: got %v, want a transient error", c.ddl, err)
		}
		mustApply(t, s, c.b)
		e.expect(t, q, c.want...)
	}
}

// testMissingKey applies a batch with a change that lacks its key: that
// row is rejected, not the batch.
func (e *pgEnv) testMissingKey(t *testing.T) {
	s, schema := e.sink(t)
	tb := table("app", schema, "app."+schema+".nokeyval", "nokeyval",
		col("v", change.String, "text"), key(col("id", change.Int32, "int4")))
	good := row(tb, change.OpCreate, pord(1), `"a"`, "1")
	for _, bad := range []apply.Row{
		row(tb, change.OpDelete, pord(1), "", ""),
		row(tb, change.OpUpdate, pord(1), `"b"`, unavailableJSON),
	} {
		err := s.Apply(context.Background(), batch(tb, good, bad))
		var re *apply.RowError
		if !errors.As(err, &re) || re.Index != 1 || !strings.Contains(err.Error(), "key column id") {
			t.Errorf("got %v, want a RowError for row 1, naming column id", err)
		}
	}
	e.expect(t, "SELECT count(*) FROM "+schema+".nokeyval", "0")
	mustApply(t, s, batch(tb, good))
	e.expect(t, "SELECT id, v FROM "+schema+".nokeyval", "1|a")
}

// testDirectCopy copies creates straight into the target, with text COPY
// must escape; applied again, their keys are taken and the batch is
// merged instead; a newer create of a key the target holds wins; a big
// batch does the same on two connections.
func (e *pgEnv) testDirectCopy(t *testing.T) {
	s, schema := e.sink(t)
	tb := table("app", schema, "app."+schema+".direct", "direct",
		key(col("id", change.Int32, "int4")), col("s", change.String, "text"), col("j", change.JSON, "jsonb"))
	var rows []apply.Row
	for i, v := range awkwardText {
		rows = append(rows, row(tb, change.OpCreate, pord(1), fmt.Sprint(i), v, `"{\"a\": \"x\\ty\"}"`))
	}
	rows = append(rows, row(tb, change.OpRead, pord(1), "100", "null", "null"))
	tg, err := resolveTarget(s.cfg.TableFormat, tb)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, batch(tb, rows...))
	if p := s.tables[tg].pause; p != 0 {
		t.Fatalf("after the first batch the direct path is paused (%d)", p)
	}
	mustApply(t, s, batch(tb, rows...))
	// Only a direct COPY that met a taken key pauses the direct path.
	if p := s.tables[tg].pause; p != directPause {
		t.Fatalf("after the replay: pause %d, want %d", p, directPause)
	}
	q := "SELECT id, coalesce(to_json(s)::text, 'NULL'), j->>'a', _tideline_op FROM " + schema + ".direct ORDER BY id"
	want := func(first string) []string {
		var out []string
		for i, text := range jsonTexts(t, awkwardText, first) {
			j, _ := json.Marshal(text)
			out = append(out, fmt.Sprintf("%d|%s|x\ty|c", i, j))
		}
		return append(out, "100|NULL|NULL|r")
	}
	e.expect(t, q, want("")...)
	mustApply(t, s, batch(tb, row(tb, change.OpCreate, pord(2), "0", `"newer"`, `"{\"a\": \"x\\ty\"}"`)))
	e.expect(t, q, want(`"newer"`)...)

	// A big batch, on two connections, half of it replayed.
	rows = rows[:0]
	for i := range 2 * parallelRows {
		rows = append(rows, row(tb, change.OpCreate, pord(3), fmt.Sprint(1000+i), `"big"`, "null"))
	}
	mustApply(t, s, batch(tb, rows[:parallelRows]...))
	s.tables = map[target]*pgTable{} // forget the pause: copy directly again
	mustApply(t, s, batch(tb, rows...))
	e.expect(t, "SELECT count(*), count(DISTINCT id) FROM "+schema+".direct WHERE s = 'big'",
		fmt.Sprintf("%d|%d", 2*parallelRows, 2*parallelRows))
}
