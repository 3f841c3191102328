package crm

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/parser"
	"github.com/expr-lang/expr/vm"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// OnDelete says what a sink does with a deleted source row.
type OnDelete string

// The delete policies. HubSpot archives (its API's delete); Salesforce
// has no archive: both archive and delete move the record to its recycle
// bin; a webhook receiver gets the word.
const (
	Archive OnDelete = "archive"
	Delete  OnDelete = "delete"
	Ignore  OnDelete = "ignore"
)

// MappingConfig is the declarative mapping of source rows to CRM records,
// shared by every CRM sink (YAML: object, id_property, fields, where,
// on_delete).
type MappingConfig struct {
	// Object is the CRM object type: "contacts" (HubSpot), "Contact"
	// (Salesforce), free text for a webhook.
	Object string
	// IDProperty is the CRM property that identifies a record across
	// syncs (HubSpot's idProperty, Salesforce's external ID field). Its
	// value is Fields[IDProperty]; when Fields has no entry for it, a
	// source column of the same name is used as is.
	IDProperty string
	// Fields maps each CRM property to an expression over the row's
	// columns (github.com/expr-lang/expr with Tideline's transforms, see
	// Functions).
	Fields map[string]string
	// Where, when set, is a boolean expression: rows for which it is not
	// true are not sent (a record already in the CRM is left as it is).
	Where string
	// OnDelete is archive (default), delete or ignore.
	OnDelete OnDelete
}

// Problem is one mistake in a sink's settings, with the YAML key it is
// about relative to the sink entry (e.g. "fields.phone").
type Problem struct {
	Key string
	Msg string
}

func (p Problem) Error() string { return p.Key + ": " + p.Msg }

// Problems is every mistake found at once.
type Problems []Problem

func (ps Problems) Error() string {
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "; ")
}

// CheckURL adds a problem for key unless v is an http:// or https:// URL.
func (ps *Problems) CheckURL(key, v string) {
	if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		*ps = append(*ps, Problem{Key: key, Msg: fmt.Sprintf("%q: want an http:// or https:// URL", v)})
	}
}

// CheckLimits adds the problems of a batch size (1 to most) and of the
// client's rate.
func (ps *Problems) CheckLimits(batchSize, most int, c ClientConfig) {
	if batchSize < 1 || batchSize > most {
		*ps = append(*ps, Problem{Key: "batch_size", Msg: fmt.Sprintf("must be between 1 and %d", most)})
	}
	if c.RatePerSecond < 0 {
		*ps = append(*ps, Problem{Key: "rate_per_second", Msg: "must not be negative"})
	}
}

// Err returns ps as an error, nil when empty.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// Check reports what can be checked without a table's columns: required
// keys, on_delete, and the syntax of every expression. Compile checks the
// rest against a table.
func (m MappingConfig) Check() Problems {
	var ps Problems
	if m.Object == "" {
		ps = append(ps, Problem{"object", "is required (the CRM object type)"})
	}
	if m.IDProperty == "" {
		ps = append(ps, Problem{"id_property", "is required (the CRM property that identifies a record)"})
	}
	switch m.OnDelete {
	case "", Archive, Delete, Ignore:
	default:
		ps = append(ps, Problem{"on_delete", fmt.Sprintf("%q: want archive, delete or ignore", m.OnDelete)})
	}
	if len(m.Fields) == 0 {
		ps = append(ps, Problem{"fields", "is required (CRM property: expression over the row's columns)"})
	}
	for _, prop := range sortedKeys(m.Fields) {
		if strings.TrimSpace(m.Fields[prop]) == "" {
			ps = append(ps, Problem{"fields." + prop, "is empty"})
		} else if _, err := parser.Parse(m.Fields[prop]); err != nil {
			ps = append(ps, Problem{"fields." + prop, oneLine(err)})
		}
	}
	if m.Where != "" {
		if _, err := parser.Parse(m.Where); err != nil {
			ps = append(ps, Problem{"where", oneLine(err)})
		}
	}
	return ps
}

// Mapping is a MappingConfig compiled against one table shape. It is
// safe for concurrent use.
type Mapping struct {
	cfg      MappingConfig
	table    *change.Table
	fields   []*compiled // by property name
	id       *compiled   // the id property's, also in fields
	where    *compiled   // nil: every row
	used     []int       // columns any expression reads
	keysOnly bool        // the id needs key columns only: deletes can be mapped
}

// compiled is one expression.
type compiled struct {
	key  string // YAML key: fields.<prop> or where
	prop string
	prog *vm.Program
	cols []int // columns it reads
}

// Compile compiles m's expressions against table's columns, typed from
// their logical types, so that an unknown column or a transform given the
// wrong type is found before the first row (tideline validate). The
// error is Problems, each naming the property and the columns.
func Compile(m MappingConfig, table *change.Table) (*Mapping, error) {
	if ps := m.Check(); len(ps) > 0 {
		return nil, ps
	}
	if m.OnDelete == "" {
		m.OnDelete = Archive
	}
	fields := m.Fields
	if _, ok := fields[m.IDProperty]; !ok {
		if columnIndex(table, m.IDProperty) < 0 {
			return nil, Problems{{"id_property", fmt.Sprintf("%q is neither in fields nor a column of %s: add fields.%s: <expression>", m.IDProperty, table.Label(), m.IDProperty)}}
		}
		fields = make(map[string]string, len(m.Fields)+1)
		for k, v := range m.Fields {
			fields[k] = v
		}
		fields[m.IDProperty] = m.IDProperty
	}
	env := typedEnv(table)
	mp := &Mapping{cfg: m, table: table}
	var ps Problems
	used := map[int]bool{}
	compile := func(key, prop, src string, opts ...expr.Option) *compiled {
		c, err := compileExpr(table, env, key, src, opts...)
		if err != nil {
			ps = append(ps, Problem{key, err.Error()})
			return nil
		}
		c.prop = prop
		for _, i := range c.cols {
			used[i] = true
		}
		return c
	}
	for _, prop := range sortedKeys(fields) {
		if c := compile("fields."+prop, prop, fields[prop]); c != nil {
			mp.fields = append(mp.fields, c)
			if prop == m.IDProperty {
				mp.id = c
			}
		}
	}
	if m.Where != "" {
		mp.where = compile("where", "", m.Where, expr.AsBool())
	}
	if len(ps) > 0 {
		return nil, ps
	}
	for i := range used {
		mp.used = append(mp.used, i)
	}
	sort.Ints(mp.used)
	mp.keysOnly = true
	for _, i := range mp.id.cols {
		if !table.Columns[i].Key {
			mp.keysOnly = false
		}
	}
	return mp, nil
}

// compileExpr type-checks and compiles one expression.
func compileExpr(table *change.Table, env map[string]any, key, src string, opts ...expr.Option) (*compiled, error) {
	tree, err := parser.Parse(src)
	if err != nil {
		return nil, errors.New(oneLine(err))
	}
	c := &compiled{key: key}
	for _, name := range identifiers(tree.Node) {
		if i := columnIndex(table, name); i >= 0 {
			c.cols = append(c.cols, i)
		}
	}
	opts = append(append([]expr.Option{expr.Env(env)}, functionOptions...), opts...)
	prog, err := expr.Compile(src, opts...)
	if err != nil {
		msg := oneLine(err)
		if name, ok := strings.CutPrefix(msg, "unknown name "); ok {
			name, _, _ = strings.Cut(name, " ")
			return nil, fmt.Errorf("%s: unknown column %q of %s (it has %s)", src, name, table.Label(), columnList(table))
		}
		// expr names the types; say which columns have them.
		var cols []string
		for _, i := range c.cols {
			col := table.Columns[i]
			cols = append(cols, fmt.Sprintf("%s is %s", col.Name, col.Logical))
		}
		if len(cols) > 0 {
			msg += " (column " + strings.Join(cols, ", column ") + ")"
		}
		return nil, fmt.Errorf("%s: %s", src, msg)
	}
	c.prog = prog
	return c, nil
}

// identifiers returns the names an expression reads (columns, or
// $env["name"]), not the functions it calls.
func identifiers(root ast.Node) []string {
	// ast.Walk visits children before their parent, so the callees are
	// marked in a first pass.
	callees := calleeVisitor{}
	ast.Walk(&root, callees)
	v := &identVisitor{seen: map[string]bool{}, callees: callees}
	ast.Walk(&root, v)
	return v.names
}

type calleeVisitor map[ast.Node]bool

func (c calleeVisitor) Visit(node *ast.Node) {
	if n, ok := (*node).(*ast.CallNode); ok {
		c[n.Callee] = true
	}
}

type identVisitor struct {
	names   []string
	seen    map[string]bool
	callees calleeVisitor
}

func (v *identVisitor) add(name string) {
	if !v.seen[name] {
		v.seen[name] = true
		v.names = append(v.names, name)
	}
}

func (v *identVisitor) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		if n.Value != "$env" && !v.callees[n] {
			v.add(n.Value)
		}
	case *ast.MemberNode:
		if id, ok := n.Node.(*ast.IdentifierNode); ok && id.Value == "$env" {
			if s, ok := n.Property.(*ast.StringNode); ok {
				v.add(s.Value)
			}
		}
	}
}

// Table is the shape the mapping was compiled for.
func (m *Mapping) Table() *change.Table { return m.table }

// Config is the mapping's settings, defaults applied.
func (m *Mapping) Config() MappingConfig { return m.cfg }

// DeletesNeedCache reports whether the id property's expression reads a
// non-key column: a delete carries only the key columns, so its record
// can only be found from the id the sink sent for the key before.
func (m *Mapping) DeletesNeedCache() bool { return !m.keysOnly }

// MapError is a row the mapping cannot turn into a record: it goes to the
// dead-letter topic with this message.
type MapError struct {
	Key string // fields.<prop>, or where
	Err error
}

func (e *MapError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *MapError) Unwrap() error { return e.Err }

// ErrNoID says that a row's id could not be computed: the id expression
// gave null, or reads a column the change does not carry.
var ErrNoID = errors.New("no id")

// Apply maps one row (aligned with the table's columns) to the CRM
// record's properties and id. keep is false for a row the where filter
// leaves out, and for a delete when on_delete is ignore. A delete returns
// its id and no properties.
//
// A property whose expression reads a column the change does not carry
// (an unchanged TOASTed value, a column the change's shape lacked) is left
// out, so the CRM keeps what it has. A null value is sent as null (the
// sink decides how its API clears a property).
func (m *Mapping) Apply(row apply.Row) (props map[string]any, id string, keep bool, err error) {
	env, absent, err := m.env(row)
	if err != nil {
		return nil, "", false, err
	}
	if row.Op == change.OpDelete {
		if m.cfg.OnDelete == Ignore {
			return nil, "", false, nil
		}
		id, err := m.idOf(env, absent)
		return nil, id, err == nil, err
	}
	if m.where != nil && !reads(m.where, absent) {
		ok, err := expr.Run(m.where.prog, env)
		if err != nil {
			return nil, "", false, &MapError{"where", errors.New(oneLine(err))}
		}
		if ok != true {
			return nil, "", false, nil
		}
	}
	props = make(map[string]any, len(m.fields))
	for _, f := range m.fields {
		if reads(f, absent) {
			continue
		}
		v, err := expr.Run(f.prog, env)
		if err != nil {
			return nil, "", false, &MapError{f.key, errors.New(oneLine(err))}
		}
		props[f.prop] = v
	}
	id, err = m.idOf(env, absent)
	if err != nil {
		return nil, "", false, err
	}
	props[m.cfg.IDProperty] = id
	return props, id, true, nil
}

// idOf computes the id property's value as text.
func (m *Mapping) idOf(env map[string]any, absent map[int]bool) (string, error) {
	for _, i := range m.id.cols {
		if absent[i] {
			return "", &MapError{m.id.key, fmt.Errorf("%w: column %s is not in the change", ErrNoID, m.table.Columns[i].Name)}
		}
	}
	v, err := expr.Run(m.id.prog, env)
	if err != nil {
		return "", &MapError{m.id.key, errors.New(oneLine(err))}
	}
	s := Text(v)
	if v == nil || s == "" {
		return "", &MapError{m.id.key, fmt.Errorf("%w: the id property %s is empty", ErrNoID, m.cfg.IDProperty)}
	}
	return s, nil
}

func reads(c *compiled, absent map[int]bool) bool {
	if len(absent) == 0 {
		return false
	}
	for _, i := range c.cols {
		if absent[i] {
			return true
		}
	}
	return false
}

// env decodes the columns the expressions read.
func (m *Mapping) env(row apply.Row) (map[string]any, map[int]bool, error) {
	env := make(map[string]any, len(m.used))
	var absent map[int]bool
	for _, i := range m.used {
		col := m.table.Columns[i]
		var raw json.RawMessage
		if i < len(row.Values) {
			raw = row.Values[i]
		}
		if raw == nil || apply.IsUnavailable(raw) {
			if absent == nil {
				absent = map[int]bool{}
			}
			absent[i] = true
			env[col.Name] = nil
			continue
		}
		v, err := Decode(col, raw)
		if err != nil {
			return nil, nil, &MapError{"column " + col.Name, err}
		}
		env[col.Name] = v
	}
	return env, absent, nil
}

// Decode turns a column's JSON value (docs/types.md) into the Go value
// expressions see: int (int16, int32, int64), uint64, float64, bool,
// string (decimal, text, uuid, json, bytes as base64, time of day,
// intervals), time.Time in UTC (date, timestamp, timestamptz), []any
// (array), or nil for SQL NULL.
func Decode(col change.Column, raw json.RawMessage) (any, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	bad := func(err error) error {
		return fmt.Errorf("column %s (%s): value %s: %v", col.Name, col.Logical, clip(raw), err)
	}
	switch col.Logical {
	case change.Int16, change.Int32, change.Int64:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return nil, bad(err)
		}
		return int(n), nil
	case change.Uint64:
		n, err := strconv.ParseUint(string(raw), 10, 64)
		if err != nil {
			return nil, bad(err)
		}
		return n, nil
	case change.Float32, change.Float64:
		if raw[0] == '"' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, bad(err)
			}
			switch s {
			case "NaN":
				return math.NaN(), nil
			case "Infinity":
				return math.Inf(1), nil
			case "-Infinity":
				return math.Inf(-1), nil
			}
			return nil, bad(errors.New("not a number"))
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return nil, bad(err)
		}
		return f, nil
	case change.Bool:
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, bad(err)
		}
		return b, nil
	case change.Date, change.Timestamp, change.TimestampTZ:
		t, err := toTime(col.Logical, raw)
		if err != nil {
			return nil, bad(err)
		}
		return t, nil
	case change.Array:
		var a []any
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, bad(err)
		}
		return a, nil
	}
	// Everything else is a JSON string (docs/types.md); a number where a
	// string was expected (a MySQL YEAR mapped as text…) is kept as its
	// text.
	if raw[0] != '"' {
		return string(raw), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, bad(err)
	}
	return s, nil
}

// toTime decodes a date (days since 1970-01-01), a timestamp
// (microseconds since the epoch) or a timestamptz (ISO-8601 string).
func toTime(l change.Logical, raw json.RawMessage) (time.Time, error) {
	if raw[0] == '"' {
		// timestamptz, or the text PostgreSQL sends for values with no
		// number form ("infinity", BC dates): only ISO-8601 decodes.
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, err
		}
		return parseTime(s)
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	if l == change.Date {
		return time.Unix(n*86400, 0).UTC(), nil
	}
	return time.UnixMicro(n).UTC(), nil
}

// typedEnv is a value of each column's Go type, for expr's type checker.
func typedEnv(t *change.Table) map[string]any {
	env := make(map[string]any, len(t.Columns))
	for _, c := range t.Columns {
		switch c.Logical {
		case change.Int16, change.Int32, change.Int64:
			env[c.Name] = 0
		case change.Uint64:
			env[c.Name] = uint64(0)
		case change.Float32, change.Float64:
			env[c.Name] = 0.0
		case change.Bool:
			env[c.Name] = false
		case change.Date, change.Timestamp, change.TimestampTZ:
			env[c.Name] = time.Time{}
		case change.Array:
			env[c.Name] = []any{}
		default:
			env[c.Name] = ""
		}
	}
	return env
}

// Text renders a mapped value as text (ids, and CRMs that take every
// property as a string): nil is "", a time is RFC 3339 in UTC (a date at
// midnight UTC is YYYY-MM-DD), numbers in their shortest form.
func Text(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case time.Time:
		return timeText(x)
	case []byte:
		return base64.StdEncoding.EncodeToString(x)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func timeText(t time.Time) string {
	t = t.UTC()
	if t.Hour() == 0 && t.Minute() == 0 && t.Second() == 0 && t.Nanosecond() == 0 {
		return t.Format(time.DateOnly)
	}
	return t.Format(time.RFC3339Nano)
}

// JSONValue is v as it goes into a JSON body: times as Text renders them,
// NaN and infinities (which JSON cannot hold) as text; everything else as
// is.
func JSONValue(v any) any {
	switch x := v.(type) {
	case time.Time:
		return timeText(x)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return Text(x)
		}
	}
	return v
}

func columnIndex(t *change.Table, name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func columnList(t *change.Table) string {
	names := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// oneLine keeps the first line of expr's error (the rest draws a caret
// under the expression, which does not survive a YAML-keyed message).
func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}
