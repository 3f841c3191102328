package sqlsink

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Helpers shared by the DuckDB and MySQL sink tests.

// scanRows runs q on db and calls each for every row, its values scanned
// as nullable text into a slice of its own.
func scanRows(t *testing.T, db *sql.DB, q string, args []any, each func(cols []string, vals []sql.NullString)) {
	t.Helper()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		each(cols, vals)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// textRows reads a query's rows as text, "NULL" for NULL.
func textRows(t *testing.T, db *sql.DB, q string, args ...any) [][]string {
	t.Helper()
	var out [][]string
	scanRows(t, db, q, args, func(cols []string, vals []sql.NullString) {
		r := make([]string, len(cols))
		for i, v := range vals {
			r[i] = "NULL"
			if v.Valid {
				r[i] = v.String
			}
		}
		out = append(out, r)
	})
	return out
}

// mapRows reads a query's rows as column -> text (nil for NULL).
func mapRows(t *testing.T, db *sql.DB, q string, args ...any) []map[string]*string {
	t.Helper()
	var out []map[string]*string
	scanRows(t, db, q, args, func(cols []string, vals []sql.NullString) {
		r := map[string]*string{}
		for i := range vals {
			r[cols[i]] = nil
			if vals[i].Valid {
				r[cols[i]] = &vals[i].String
			}
		}
		out = append(out, r)
	})
	return out
}

// expectRows checks the rows q read, each joined with "|".
func expectRows(t *testing.T, rows [][]string, q string, want ...string) {
	t.Helper()
	var got []string
	for _, r := range rows {
		got = append(got, strings.Join(r, "|"))
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot  %q\nwant %q", q, got, want)
	}
}

// awkwardText holds JSON strings a text format must escape or quote
// (COPY's text format, CSV): separators, quotes, backslashes, line
// breaks, COPY's NULL and end markers, an empty string, non-ASCII.
var awkwardText = []string{`"a,b"`, `"say \"hi\""`, `"back\\slash"`, `"tab\there"`, `"two\nlines"`, `"cr\r\n"`,
	`"\\N"`, `"\\."`, `""`, `"héllo 😀"`, `"   "`}

// jsonTexts decodes JSON strings, as a test's expected values; first,
// if not empty, replaces the first of them.
func jsonTexts(t *testing.T, vals []string, first string) []string {
	t.Helper()
	out := make([]string, len(vals))
	for i, v := range vals {
		if i == 0 && first != "" {
			v = first
		}
		if err := json.Unmarshal([]byte(v), &out[i]); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
	}
	return out
}

func col(name string, l change.Logical, typ string) change.Column {
	return change.Column{Name: name, Logical: l, Type: typ}
}

func key(c change.Column) change.Column { c.Key = true; return c }

// table is a source table of database db and schema ("" for none), its
// topic the given one.
func table(db, schema, topic, name string, cols ...change.Column) *change.Table {
	t := &change.Table{Database: db, Schema: schema, Name: name, Topic: topic, Columns: cols}
	t.HasKey = slices.ContainsFunc(cols, func(c change.Column) bool { return c.Key })
	return t
}

// hexOrder is a change's Order: fixed-width hex, like codec.Order.
func hexOrder(n, width int) string { return fmt.Sprintf("%0*x", width, n) }

// row builds a change of t at order; vals are JSON values aligned with
// t.Columns, "" for absent.
func row(t *change.Table, op change.Op, order []byte, vals ...string) apply.Row {
	r := apply.Row{Op: op, Order: order}
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

func batch(t *change.Table, rows ...apply.Row) *apply.TableBatch {
	return &apply.TableBatch{Table: t, Topic: t.Topic, Rows: rows}
}

// mustApply applies b and fails the test on an error.
func mustApply(t *testing.T, s apply.Sink, b *apply.TableBatch) {
	t.Helper()
	if err := s.Apply(context.Background(), b); err != nil {
		t.Fatalf("apply: %v", err)
	}
}
