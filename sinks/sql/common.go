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

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
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
	// Most values fit: the string is then the only allocation.
	var a [64]byte
	b, null, err := appendText(a[:0], raw, l, st)
	return string(b), null, err
}

// span is a value's place in rendered.text; end < 0 is NULL (or a value
// the row does not carry).
type span struct{ off, end int }

// rendered is a batch's values rendered as text, all in one buffer.
type rendered struct {
	b    *apply.TableBatch
	text []byte
	vals []span // row i's value of column j at i*len(columns)+j
}

// value returns row i's value of column j, or false for NULL.
func (r *rendered) value(i, j int) ([]byte, bool) {
	v := r.vals[i*len(r.b.Table.Columns)+j]
	if v.end < 0 {
		return nil, false
	}
	return r.text[v.off:v.end], true
}

// render renders the values of b (target table) with appendText. post,
// if not nil, checks or rewrites the value it just appended, text[off:],
// and returns the text. A row without a key column, or a value its column
// cannot hold or post refuses, is returned as that row's RowError.
func render(table string, b *apply.TableBatch, st textStyle, post func(text []byte, off int) ([]byte, error)) (rendered, error) {
	cols := b.Table.Columns
	size := 0
	for i := range b.Rows {
		for _, v := range b.Rows[i].Values {
			size += len(v)
		}
	}
	r := rendered{b: b, text: make([]byte, 0, size+size/8), vals: make([]span, len(b.Rows)*len(cols))}
	for i := range b.Rows {
		vals := r.vals[i*len(cols) : (i+1)*len(cols)]
		for j, v := range b.Rows[i].Values {
			c := &cols[j]
			vals[j] = span{end: -1}
			if absent(v) {
				if c.Key {
					return rendered{}, keyAbsent(i, table, c.Name)
				}
				continue // never read by its group's statements
			}
			off := len(r.text)
			out, null, err := appendText(r.text, v, c.Logical, st)
			if err == nil && !null && post != nil {
				out, err = post(out, off)
			}
			if err != nil {
				return rendered{}, &apply.RowError{Index: i, Err: fmt.Errorf("column %s: %w", c.Name, err)}
			}
			r.text = out
			if !null {
				vals[j] = span{off: off, end: len(r.text)}
			}
		}
	}
	return r, nil
}

// appendText is textValue appending to dst: the sinks render a batch's
// values into one buffer, without a string per value. On null or an
// error it returns dst unchanged.
func appendText(dst []byte, raw json.RawMessage, l change.Logical, st textStyle) (_ []byte, null bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return dst, true, nil
	}
	switch l {
	case change.JSON:
		// The JSON text, carried in a JSON string.
		out, err := codec.AppendJSONString(dst, raw)
		if err != nil {
			return dst, false, fmt.Errorf("json column: want a string holding JSON, got %.60s", raw)
		}
		return out, false, nil
	case change.Array:
		if raw[0] != '[' {
			return dst, false, fmt.Errorf("array column: got %.60s", raw)
		}
		return append(dst, raw...), false, nil
	}
	if raw[0] == '"' {
		switch l {
		case change.Int16, change.Int32, change.Int64, change.Uint64, change.Bool:
			v, err := codec.JSONString(raw)
			if err != nil {
				return dst, false, err
			}
			return dst, false, fmt.Errorf("%s column: got the string %q", l, v)
		case change.TimestampTZ:
			v, err := codec.JSONString(raw)
			if err != nil {
				return dst, false, err
			}
			return appendTimestampTZ(dst, v, st), false, nil
		}
		// Decimal, strings, uuid, timetz, interval, float NaN/Infinity,
		// and date-times PostgreSQL could not give a number for
		// ("infinity"): the target parses the text.
		out, err := codec.AppendJSONString(dst, raw)
		if err != nil {
			return dst, false, err
		}
		return out, false, nil
	}
	if raw[0] == '{' || raw[0] == '[' {
		return dst, false, fmt.Errorf("%s column: not a JSON scalar: %.60s", l, raw)
	}
	switch l {
	case change.Bool:
		switch string(raw) {
		case "true", "false":
			return append(dst, raw...), false, nil
		}
		return dst, false, fmt.Errorf("bool column: got %s", raw)
	case change.Int16, change.Int32, change.Int64, change.Uint64:
		if !plainInt(raw) {
			if _, err := strconv.ParseInt(string(raw), 10, 64); err != nil {
				if _, uerr := strconv.ParseUint(string(raw), 10, 64); uerr != nil || l != change.Uint64 {
					return dst, false, fmt.Errorf("%s column: got %s", l, raw)
				}
			}
		}
		return append(dst, raw...), false, nil
	case change.Date:
		days, err := parseInt(raw)
		if err != nil {
			return dst, false, fmt.Errorf("date column: got %s", raw)
		}
		return appendDate(dst, days), false, nil
	case change.Time:
		us, err := parseInt(raw)
		if err != nil {
			return dst, false, fmt.Errorf("time column: got %s", raw)
		}
		return append(dst, microTime(us)...), false, nil
	case change.Timestamp:
		us, err := parseInt(raw)
		if err != nil {
			return dst, false, fmt.Errorf("timestamp column: got %s", raw)
		}
		return appendTimestamp(dst, us), false, nil
	case change.String, change.UUID, change.TimeTZ, change.Interval, change.Bytes, change.TimestampTZ:
		return dst, false, fmt.Errorf("%s column: got the number %s", l, raw)
	}
	// Decimal and floats as numbers.
	if !plainInt(raw) {
		if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
			return dst, false, fmt.Errorf("%s column: got %s", l, raw)
		}
	}
	return append(dst, raw...), false, nil
}

// parseInt is strconv.ParseInt(string(s), 10, 64), with a shortcut for
// the common case (codec.ParseInt).
func parseInt(s []byte) (int64, error) {
	if n, ok := codec.ParseInt(s); ok {
		return n, nil
	}
	return strconv.ParseInt(string(s), 10, 64) // for its error
}

// The microseconds of 0001-01-01 00:00:00 and 9999-12-31 23:59:59.999999
// UTC: the range appendTimestamp renders itself.
const (
	minCivilMicros = -62135596800_000000
	maxCivilMicros = 253402300799_999999
)

// appendTimestamp appends Unix microseconds us as UTC in the layout
// "2006-01-02 15:04:05.999999", as time.Time.AppendFormat does, at a
// fraction of its cost (a batch renders one per row and column). Years
// outside 1…9999 go through the time package.
func appendTimestamp(dst []byte, us int64) []byte {
	if us < minCivilMicros || us > maxCivilMicros {
		return time.UnixMicro(us).UTC().AppendFormat(dst, "2006-01-02 15:04:05.999999")
	}
	secs := floorDiv(us, 1e6)
	frac := us - secs*1e6
	days := floorDiv(secs, 86400)
	sod := secs - days*86400
	dst = appendDate(dst, days)
	dst = append(dst, ' ')
	dst = append2(dst, sod/3600)
	dst = append(dst, ':')
	dst = append2(dst, sod/60%60)
	dst = append(dst, ':')
	dst = append2(dst, sod%60)
	if frac == 0 {
		return dst
	}
	var f [7]byte
	f[0] = '.'
	for i := 6; i > 0; i-- {
		f[i] = byte('0' + frac%10)
		frac /= 10
	}
	n := 7
	for f[n-1] == '0' {
		n--
	}
	return append(dst, f[:n]...)
}

// appendDate appends the date days after 1970-01-01 as 2006-01-02 (the
// civil-from-days algorithm of H. Hinnant); years outside 1…9999 go
// through the time package.
func appendDate(dst []byte, days int64) []byte {
	const minDays, maxDays = -719162, 2932896 // 0001-01-01, 9999-12-31
	if days < minDays || days > maxDays {
		return time.Unix(days*86400, 0).UTC().AppendFormat(dst, "2006-01-02")
	}
	z := days + 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if mp >= 10 {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	dst = append2(dst, y/100)
	dst = append2(dst, y%100)
	dst = append(dst, '-')
	dst = append2(dst, m)
	dst = append(dst, '-')
	return append2(dst, d)
}

// append2 appends 0 <= n < 100 as two digits.
func append2(dst []byte, n int64) []byte {
	return append(dst, byte('0'+n/10), byte('0'+n%10))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// plainInt reports whether s is an optional minus and 1 to 18 digits: an
// integer that fits an int64 whatever its digits, so that the common case
// needs no strconv parse.
func plainInt(s []byte) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 18 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
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

// appendTimestampTZ turns an ISO-8601 UTC timestamp into the target's
// text; what does not parse ("infinity" and the like) is left for the
// target to decide.
func appendTimestampTZ(dst []byte, v string, st textStyle) []byte {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return append(dst, v...)
	}
	dst = t.UTC().AppendFormat(dst, "2006-01-02 15:04:05.999999")
	if st.zone {
		dst = append(dst, "+00"...)
	}
	return dst
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

// parallelRows is the batch size from which two transactions share it
// (PostgreSQL, MySQL).
const parallelRows = 2000

// splitGroups splits every group's rows in two halves, for two
// transactions to write at once: the rows of a batch have distinct keys,
// so the halves touch different target rows. Each half is a contiguous
// run of the batch, not every other row: rows that arrived together
// (a transaction's creates, ascending keys) stay together, and the two
// writers contend less for the same index pages.
func splitGroups(groups []group) [2][]group {
	var halves [2][]group
	for _, g := range groups {
		var h [2]group
		half := len(g.rows) / 2
		h[0].rows, h[1].rows = g.rows[:half:half], g.rows[half:]
		for k := range halves {
			if len(h[k].rows) > 0 {
				h[k].present = g.present
				halves[k] = append(halves[k], h[k])
			}
		}
	}
	return halves
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

// appendTabEscaped appends s escaped for the tab-separated text formats
// of PostgreSQL's COPY and MySQL's LOAD DATA (ESCAPED BY '\\'), which
// read the same escapes: a backslash, tab, newline or carriage return is
// written as a backslash sequence. (NUL needs none in LOAD DATA, and
// PostgreSQL text cannot hold it.)
func appendTabEscaped[T string | []byte](dst []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
