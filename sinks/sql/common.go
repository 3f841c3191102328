// Package sqlsink applies change topics to SQL warehouses: PostgreSQL,
// MySQL/MariaDB and DuckDB. Each target table mirrors a source table: it is
// created from the change's columns (docs/sinks.md has the type mapping),
// gains the source's new columns without a restart, and carries metadata
// columns prefixed _tideline_:
//
//   - _tideline_position: the Order of the change the row reflects. A
//     change is written only if it is newer, so replays change nothing.
//   - _tideline_op: the op of that change (c, u, r; d with soft deletes).
//   - _tideline_applied_at: when it was written.
//   - _tideline_deleted: with soft_delete, true once the row was deleted.
//
// Hard deletes leave a tombstone (key and Order) in the target's
// _tideline_tombstones table, so that replaying the row's older changes
// does not bring it back; a truncate leaves one with the key "*".
package sqlsink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Config is a warehouse sink's configuration.
type Config struct {
	// Name is the sink's name (logs, metrics).
	Name string
	// Type is postgres, mysql or duckdb.
	Type string
	// DSN is the target database (postgres, mysql).
	DSN string
	// Path is the DuckDB database file.
	Path string
	// TableFormat names the target table: {db}, {schema} and {table} are
	// the source's database, schema (the database for MySQL sources) and
	// table. Default: {schema}.{table} (postgres, duckdb), {table} (mysql).
	TableFormat string
	// SoftDelete keeps deleted rows, with _tideline_deleted = true.
	SoftDelete bool
	// KeepOpen (duckdb) holds the database file open between batches;
	// false closes it after each batch so other processes can read it.
	KeepOpen bool
}

// Metadata column names.
const (
	colPosition  = "_tideline_position"
	colOp        = "_tideline_op"
	colAppliedAt = "_tideline_applied_at"
	colDeleted   = "_tideline_deleted"
	tombstones   = "_tideline_tombstones"
	truncateKey  = "*"
)

// target is a resolved target table name.
type target struct {
	schema string // "" for MySQL (the DSN's database)
	name   string
}

// resolveTarget applies the table format to a source table.
func resolveTarget(format string, t *change.Table) (target, error) {
	schema := t.Schema
	if schema == "" {
		schema = t.Database // MySQL sources
	}
	name := strings.NewReplacer("{db}", t.Database, "{schema}", schema, "{table}", t.Name).Replace(format)
	s, n, ok := strings.Cut(name, ".")
	if !ok {
		return target{name: name}, nil
	}
	if strings.Contains(n, ".") || s == "" || n == "" {
		return target{}, fmt.Errorf("table_format %q gives %q: want table or schema.table", format, name)
	}
	return target{schema: s, name: n}, nil
}

var tableFormatRe = regexp.MustCompile(`^[^.]+(\.[^.]+)?$`)

// ValidateTableFormat checks a table_format value.
func ValidateTableFormat(f string) error {
	if !tableFormatRe.MatchString(f) || !strings.Contains(f, "{table}") {
		return fmt.Errorf("%q: use {db}, {schema} and {table} in table or schema.table form, with {table}", f)
	}
	return nil
}

// DefaultTableFormat is the table_format of a sink type.
func DefaultTableFormat(typ string) string {
	if typ == "mysql" {
		return "{table}"
	}
	return "{schema}.{table}"
}

// precision parses "numeric(10,2)" or "decimal(30,10) unsigned".
func precision(typ string) (p, s int, ok bool) {
	open := strings.IndexByte(typ, '(')
	end := strings.IndexByte(typ, ')')
	if open < 0 || end < open {
		return 0, 0, false
	}
	ps, ss, _ := strings.Cut(typ[open+1:end], ",")
	p, err1 := strconv.Atoi(strings.TrimSpace(ps))
	s, err2 := strconv.Atoi(strings.TrimSpace(ss))
	if ss == "" {
		s, err2 = 0, nil
	}
	if err1 != nil || err2 != nil || p <= 0 {
		return 0, 0, false
	}
	return p, s, true
}

// length parses the n of "varchar(n)", or 0.
func length(typ string) int {
	open := strings.IndexByte(typ, '(')
	end := strings.IndexByte(typ, ')')
	if open < 0 || end < open {
		return 0
	}
	n, _ := strconv.Atoi(typ[open+1 : end])
	return n
}

// textStyle tells textValue how a dialect wants date-times.
type textStyle struct {
	// zone appends "+00" to timestamptz values; without it they are
	// written as UTC wall-clock time (MySQL DATETIME).
	zone bool
}

// textValue renders a JSON value of a column with logical type l as the
// text the target parses for that type (see docs/sinks.md), or null=true.
// Bytes stay base64 (the dialect decodes them in SQL), JSON and arrays are
// the JSON text.
//
// raw comes from the runtime's envelope parser: one JSON value, without
// surrounding white space.
func textValue(raw json.RawMessage, l change.Logical, st textStyle) (s string, null bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true, nil
	}
	switch l {
	case change.JSON:
		// The JSON text, carried in a JSON string.
		v, err := jsonString(raw)
		if err != nil {
			return "", false, fmt.Errorf("json column: want a string holding JSON, got %.60s", raw)
		}
		return v, false, nil
	case change.Array:
		if raw[0] != '[' {
			return "", false, fmt.Errorf("array column: got %.60s", raw)
		}
		return string(raw), false, nil
	}
	if raw[0] == '"' {
		v, err := jsonString(raw)
		if err != nil {
			return "", false, err
		}
		switch l {
		case change.Int16, change.Int32, change.Int64, change.Uint64, change.Bool:
			return "", false, fmt.Errorf("%s column: got the string %q", l, v)
		case change.TimestampTZ:
			return timestampTZ(v, st)
		}
		// Decimal, strings, uuid, timetz, interval, float NaN/Infinity,
		// and date-times PostgreSQL could not give a number for
		// ("infinity"): the target parses the text.
		return v, false, nil
	}
	if raw[0] == '{' || raw[0] == '[' {
		return "", false, fmt.Errorf("%s column: not a JSON scalar: %.60s", l, raw)
	}
	switch l {
	case change.Bool:
		switch string(raw) {
		case "true", "false":
			return string(raw), false, nil
		}
		return "", false, fmt.Errorf("bool column: got %s", raw)
	case change.Int16, change.Int32, change.Int64, change.Uint64:
		if _, err := strconv.ParseInt(string(raw), 10, 64); err != nil {
			if _, uerr := strconv.ParseUint(string(raw), 10, 64); uerr != nil || l != change.Uint64 {
				return "", false, fmt.Errorf("%s column: got %s", l, raw)
			}
		}
		return string(raw), false, nil
	case change.Date:
		days, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", false, fmt.Errorf("date column: got %s", raw)
		}
		return time.Unix(days*86400, 0).UTC().Format("2006-01-02"), false, nil
	case change.Time:
		us, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", false, fmt.Errorf("time column: got %s", raw)
		}
		return microTime(us), false, nil
	case change.Timestamp:
		us, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", false, fmt.Errorf("timestamp column: got %s", raw)
		}
		return time.UnixMicro(us).UTC().Format("2006-01-02 15:04:05.999999"), false, nil
	case change.String, change.UUID, change.TimeTZ, change.Interval, change.Bytes, change.TimestampTZ:
		return "", false, fmt.Errorf("%s column: got the number %s", l, raw)
	}
	// Decimal and floats as numbers.
	if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
		return "", false, fmt.Errorf("%s column: got %s", l, raw)
	}
	return string(raw), false, nil
}

// jsonString returns the content of the JSON string raw. Most strings
// need no unescaping: their content is raw's inner bytes, taken without
// json.Unmarshal's reflection. Any other string (escapes, or bytes
// json.Unmarshal rejects or replaces) goes through json.Unmarshal, so that
// both paths give the same result.
func jsonString(raw []byte) (string, error) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && plainJSON(raw[1:n-1]) {
		return string(raw[1 : n-1]), nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return v, nil
}

// plainJSON reports whether s, the inside of a JSON string, is its own
// content: no escape, no quote or control character (invalid unescaped)
// and valid UTF-8 (json.Unmarshal replaces invalid bytes with U+FFFD).
func plainJSON(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c == '"' || c < 0x20 {
			return false
		}
	}
	return utf8.Valid(s)
}

// microTime renders microseconds as [-]HH:MM:SS.ffffff (hours may pass 24:
// MySQL's TIME range).
func microTime(us int64) string {
	neg := us < 0
	if neg {
		us = -us
	}
	h, us := us/3600e6, us%3600e6
	m, us := us/60e6, us%60e6
	sec, frac := us/1e6, us%1e6
	s := fmt.Sprintf("%02d:%02d:%02d.%06d", h, m, sec, frac)
	if neg {
		s = "-" + s
	}
	return s
}

// timestampTZ turns an ISO-8601 UTC timestamp into the target's text.
func timestampTZ(v string, st textStyle) (string, bool, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return v, false, nil // "infinity" and the like: the target decides
	}
	s := t.UTC().Format("2006-01-02 15:04:05.999999")
	if st.zone {
		s += "+00"
	}
	return s, false, nil
}

// absent reports whether a row value is absent: the target keeps what it
// has (apply.Row.Values).
func absent(v json.RawMessage) bool { return v == nil || apply.IsUnavailable(v) }

// keyAbsent is the error for row i, which does not carry key column col
// of table: there is nothing to match its target row on. Only that row is
// at fault; the others of the batch may be fine.
func keyAbsent(i int, table, col string) error {
	return &apply.RowError{Index: i, Err: fmt.Errorf("%s: the change lacks key column %s", table, col)}
}

// group is rows that carry the same columns, so that they are written by
// one statement.
type group struct {
	present []bool // for each column of the table, whether the rows carry it
	rows    []int  // indexes into the batch's Rows
}

// only returns g with the rows keep says, or false if none is left.
func (g group) only(keep []bool) (group, bool) {
	rows := make([]int, 0, len(g.rows))
	for _, i := range g.rows {
		if keep[i] {
			rows = append(rows, i)
		}
	}
	g.rows = rows
	return g, len(rows) > 0
}

// groupByPresence splits rows into groups that carry the same columns, in
// first-seen order. Nearly every batch is one group.
func groupByPresence(rows []apply.Row) []group {
	var out []group
	at := map[string]int{} // presence pattern -> index into out
	var k []byte
	for i := range rows {
		k = k[:0]
		for _, v := range rows[i].Values {
			if absent(v) {
				k = append(k, '0')
			} else {
				k = append(k, '1')
			}
		}
		n, ok := at[string(k)]
		if !ok {
			n = len(out)
			at[string(k)] = n
			present := make([]bool, len(k))
			for j, c := range k {
				present[j] = c == '1'
			}
			out = append(out, group{present: present})
		}
		out[n].rows = append(out[n].rows, i)
	}
	return out
}

// keyColumns returns the indexes of the key columns.
func keyColumns(t *change.Table) []int {
	var out []int
	for i, c := range t.Columns {
		if c.Key {
			out = append(out, i)
		}
	}
	return out
}

// errNoKey is returned for tables without key columns: upserts need one.
var errNoKey = errors.New("the source table has no primary key (or replica identity): the warehouse sinks upsert by key and cannot apply its changes")

// newer reports whether order a is newer than b.
func newer(a, b []byte) bool { return bytes.Compare(a, b) > 0 }
