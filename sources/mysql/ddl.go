package mysql

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	pcharset "github.com/pingcap/tidb/pkg/parser/charset"
	pmysql "github.com/pingcap/tidb/pkg/parser/mysql"
	// The parser needs a driver for literal values (DEFAULT 'x').
	_ "github.com/pingcap/tidb/pkg/parser/test_driver"
	"github.com/pingcap/tidb/pkg/parser/types"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// The DDL tracker keeps the shapes of the captured tables in binlog order:
// each DDL statement read from the binlog is parsed (TiDB's MySQL parser,
// which go-mysql ships) and applied to the shapes as they were just before
// it. Nothing is re-read from the server while streaming, so a replay from
// an old position after several DDLs decodes every row with the columns it
// was written with.

// effectKind says what a DDL did to one table.
type effectKind uint8

const (
	effAltered effectKind = iota + 1
	effCreated
	// effGone: the table left the capture under its name, dropped or
	// renamed (a rename within the capture also creates the new name).
	effGone
	effTruncated
)

// effect is what a DDL statement did to one captured table.
type effect struct {
	kind effectKind
	name string // db.table
	// to is the new name of a table that was renamed (captured or not),
	// "" when it was dropped; only for the log.
	to string
}

// ddlTracker applies parsed DDL to the captured shapes.
type ddlTracker struct {
	p      *parser.Parser
	prefix string
	// match reports whether db.table is captured (source.tables).
	match func(name string) bool
	// dbCharset returns a database's default character set, for tables
	// created without one. An error makes the statement untracked (the
	// stream then reads the shape from the server).
	dbCharset func(db string) (string, error)
}

// errUnparsed marks a statement the parser did not understand.
type errUnparsed struct {
	query string
	err   error
}

func (e errUnparsed) Error() string {
	return fmt.Sprintf("cannot parse DDL %q: %v", shorten(e.query), e.err)
}

func shorten(q string) string {
	if len(q) > 200 {
		return q[:200] + "…"
	}
	return q
}

// errUntracked marks a statement that parsed but cannot be applied to the
// tracked shapes; tables are the captured tables it names (tracked, or
// matching source.tables), which the stream reads from the server instead.
type errUntracked struct {
	tables []string
	err    error
}

func (e errUntracked) Error() string { return e.err.Error() }
func (e errUntracked) Unwrap() error { return e.err }

// apply applies the statement q (run with default database db) to the
// shapes in tables and returns the shapes after it and what it did to
// captured tables. It never changes tables: the result is a new map when
// q changed something. A statement is applied whole or not at all: when a
// part of it fails (the second pair of a RENAME TABLE, say), the caller
// still has tables as they were before q, which name every table the
// statement may have touched. Every *table it changes is replaced, never
// altered (shapes are immutable once handed out: events hold them).
func (d *ddlTracker) apply(tables map[string]*table, db, q string) (map[string]*table, []effect, error) {
	stmts, _, err := d.p.Parse(mariadbCompat(q), "", "")
	if err != nil {
		return nil, nil, errUnparsed{q, err}
	}
	var next map[string]*table // copied on the first statement that can change it
	var out []effect
	for _, s := range stmts {
		if next == nil && changesShapes(s) {
			next = maps.Clone(tables)
		}
		cur := next
		if cur == nil {
			cur = tables // read only: s changes no shape
		}
		effs, err := d.applyOne(cur, db, s)
		if err != nil {
			return nil, nil, errUntracked{tables: d.touched(tables, db, stmts), err: fmt.Errorf("DDL %q: %w", shorten(q), err)}
		}
		out = append(out, effs...)
	}
	if next == nil {
		next = tables
	}
	return next, out, nil
}

// changesShapes reports whether applyOne may change the map for s.
func changesShapes(s ast.StmtNode) bool {
	switch s.(type) {
	case *ast.CreateTableStmt, *ast.AlterTableStmt, *ast.RenameTableStmt, *ast.DropTableStmt, *ast.DropDatabaseStmt:
		return true
	}
	return false
}

// touched returns the captured tables that stmts name, tracked in tables or
// matching source.tables (a table entering the capture), sorted.
func (d *ddlTracker) touched(tables map[string]*table, db string, stmts []ast.StmtNode) []string {
	v := &tableNames{db: db, seen: map[string]bool{}}
	for _, s := range stmts {
		s.Accept(v)
	}
	var out []string
	for name := range v.seen {
		if _, ok := tables[name]; ok || d.match(name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// tableNames collects the qualified names of the tables a statement
// names.
type tableNames struct {
	db   string
	seen map[string]bool
}

func (v *tableNames) Enter(n ast.Node) (ast.Node, bool) {
	if tn, ok := n.(*ast.TableName); ok {
		v.seen[qualify(v.db, tn)] = true
	}
	return n, false
}

func (v *tableNames) Leave(n ast.Node) (ast.Node, bool) { return n, true }

// mariadbCompat rewrites MariaDB-only forms the parser does not know into
// equivalent MySQL ones.
func mariadbCompat(q string) string {
	t := strings.TrimSpace(q)
	if len(t) > 23 && strings.EqualFold(t[:23], "CREATE OR REPLACE TABLE") {
		return "CREATE TABLE" + t[23:]
	}
	return q
}

func qualify(db string, tn *ast.TableName) string {
	if tn.Schema.O != "" {
		db = tn.Schema.O
	}
	return db + "." + tn.Name.O
}

func (d *ddlTracker) applyOne(tables map[string]*table, db string, s ast.StmtNode) ([]effect, error) {
	switch x := s.(type) {
	case *ast.CreateTableStmt:
		if x.TemporaryKeyword != ast.TemporaryNone {
			return nil, nil // never in a ROW-format binlog, and never captured
		}
		name := qualify(db, x.Table)
		if !d.match(name) {
			return nil, nil
		}
		if _, ok := tables[name]; ok && x.IfNotExists {
			return nil, nil
		}
		var tab *table
		switch {
		case x.ReferTable != nil: // CREATE TABLE t LIKE other
			src, ok := tables[qualify(db, x.ReferTable)]
			if !ok {
				return nil, fmt.Errorf("CREATE TABLE %s LIKE %s: the shape of %s is not tracked (it is not captured)", name, qualify(db, x.ReferTable), qualify(db, x.ReferTable))
			}
			tab = src.clone(name)
		case x.Select != nil:
			return nil, fmt.Errorf("CREATE TABLE %s … SELECT: the columns of a query result are not tracked", name)
		default:
			tab = &table{name: name, charset: tableCharset(x.Options)}
			if tab.charset == "" {
				cs, err := d.dbCharset(dbOf(name))
				if err != nil {
					return nil, fmt.Errorf("CREATE TABLE %s without a character set: %w", name, err)
				}
				tab.charset = cs
			}
			for _, cd := range x.Cols {
				tab.cols = append(tab.cols, tab.columnOf(cd))
			}
			for _, c := range x.Constraints {
				if c.Tp == ast.ConstraintPrimaryKey {
					tab.setKey(c)
				}
			}
		}
		tab.build(d.prefix)
		tables[name] = tab
		return []effect{{kind: effCreated, name: name}}, nil

	case *ast.AlterTableStmt:
		name := qualify(db, x.Table)
		old, ok := tables[name]
		if !ok {
			return nil, nil
		}
		tab := old.clone(name)
		to := ""
		for _, sp := range x.Specs {
			if sp.Tp == ast.AlterTableRenameTable {
				to = qualify(dbOf(name), sp.NewTable)
				continue
			}
			if err := tab.alter(sp); err != nil {
				return nil, fmt.Errorf("table %s: %w", name, err)
			}
		}
		tab.build(d.prefix)
		if to != "" && to != name {
			return d.rename(tables, name, to, tab), nil
		}
		tables[name] = tab
		return []effect{{kind: effAltered, name: name}}, nil

	case *ast.RenameTableStmt:
		var out []effect
		for _, tt := range x.TableToTables {
			from, to := qualify(db, tt.OldTable), qualify(db, tt.NewTable)
			tab, ok := tables[from]
			if !ok {
				if d.match(to) {
					return out, fmt.Errorf("table %s is renamed into the capture as %s, but its shape was never tracked", from, to)
				}
				continue
			}
			out = append(out, d.rename(tables, from, to, tab)...)
		}
		return out, nil

	case *ast.DropTableStmt:
		if x.IsView || x.TemporaryKeyword != ast.TemporaryNone {
			return nil, nil
		}
		var out []effect
		for _, tn := range x.Tables {
			name := qualify(db, tn)
			if _, ok := tables[name]; ok {
				delete(tables, name)
				out = append(out, effect{kind: effGone, name: name})
			}
		}
		return out, nil

	case *ast.DropDatabaseStmt:
		var out []effect
		for name := range tables {
			if dbOf(name) == x.Name.O {
				delete(tables, name)
				out = append(out, effect{kind: effGone, name: name})
			}
		}
		slices.SortFunc(out, func(a, b effect) int { return strings.Compare(a.name, b.name) })
		return out, nil

	case *ast.TruncateTableStmt:
		name := qualify(db, x.Table)
		if _, ok := tables[name]; ok {
			return []effect{{kind: effTruncated, name: name}}, nil
		}
		return nil, nil
	}
	return nil, nil
}

// rename moves tab from name from to name to: it stays captured under the
// new name when that matches source.tables, else it leaves the capture.
func (d *ddlTracker) rename(tables map[string]*table, from, to string, tab *table) []effect {
	delete(tables, from)
	if !d.match(to) {
		return []effect{{kind: effGone, name: from, to: to}}
	}
	moved := tab.clone(to)
	moved.build(d.prefix)
	tables[to] = moved
	return []effect{{kind: effGone, name: from, to: to}, {kind: effCreated, name: to}}
}

func dbOf(name string) string {
	db, _, _ := strings.Cut(name, ".")
	return db
}

// tableCharset returns the DEFAULT CHARSET (or the charset of the COLLATE)
// of table options, or "".
func tableCharset(opts []*ast.TableOption) string {
	cs := ""
	for _, o := range opts {
		switch o.Tp {
		case ast.TableOptionCharset:
			if !o.Default {
				cs = strings.ToLower(o.StrValue)
			}
		case ast.TableOptionCollate:
			if cs == "" {
				if c, err := pcharset.GetCollationByName(o.StrValue); err == nil {
					cs = c.CharsetName
				}
			}
		}
	}
	return cs
}

// clone copies a table's shape under name (columns are values, so the copy
// can be altered without touching tab). The caller builds it once done.
func (tab *table) clone(name string) *table {
	return &table{name: name, charset: tab.charset, cols: slices.Clone(tab.cols)}
}

// build makes the change.Table of the shape.
func (tab *table) build(prefix string) {
	db, t, _ := strings.Cut(tab.name, ".")
	ct := &change.Table{Database: db, Name: t, Topic: prefix + "." + db + "." + t}
	for _, c := range tab.cols {
		ct.Columns = append(ct.Columns, change.Column{Name: c.name, Type: c.colType, Logical: c.logical, Key: c.key})
		ct.HasKey = ct.HasKey || c.key
	}
	tab.t = ct
}

// columnOf turns a column definition into a column; text columns without
// a character set of their own take the table's.
func (tab *table) columnOf(cd *ast.ColumnDef) column {
	tp := cd.Tp
	cs := strings.ToLower(tp.GetCharset())
	key := false
	for _, o := range cd.Options {
		switch o.Tp {
		case ast.ColumnOptionPrimaryKey:
			key = true
		case ast.ColumnOptionCollate:
			if cs == "" {
				if c, err := pcharset.GetCollationByName(o.StrValue); err == nil {
					cs = c.CharsetName
				}
			}
		}
	}
	if cs == "" && tp.GetCollate() != "" {
		if c, err := pcharset.GetCollationByName(tp.GetCollate()); err == nil {
			cs = c.CharsetName
		}
	}
	dataType := types.TypeToStr(tp.GetType(), tp.GetCharset())
	colType := tp.InfoSchemaStr()
	switch {
	case cs == "binary" || !isText(tp.GetType()):
		// information_schema has no character set for these.
		cs = ""
	case cs == "":
		cs = tab.charset
	}
	if tp.GetType() == pmysql.TypeYear {
		colType = "year"
	}
	return newColumn(cd.Name.Name.O, dataType, colType, cs, key)
}

// isText reports whether a column of type tp holds text in a character set.
func isText(tp byte) bool {
	switch tp {
	case pmysql.TypeVarchar, pmysql.TypeString, pmysql.TypeVarString,
		pmysql.TypeBlob, pmysql.TypeTinyBlob, pmysql.TypeMediumBlob, pmysql.TypeLongBlob,
		pmysql.TypeEnum, pmysql.TypeSet:
		return true
	}
	return false
}

func (tab *table) index(name string) int {
	return slices.IndexFunc(tab.cols, func(c column) bool { return strings.EqualFold(c.name, name) })
}

// place inserts c at the position an ADD/MODIFY/CHANGE names (the end by
// default; a MODIFY/CHANGE without one keeps the column where it was: at).
func (tab *table) place(c column, pos *ast.ColumnPosition, at int) error {
	switch {
	case pos != nil && pos.Tp == ast.ColumnPositionFirst:
		at = 0
	case pos != nil && pos.Tp == ast.ColumnPositionAfter:
		i := tab.index(pos.RelativeColumn.Name.O)
		if i < 0 {
			return fmt.Errorf("AFTER %s: no such column", pos.RelativeColumn.Name.O)
		}
		at = i + 1
	case at < 0:
		at = len(tab.cols)
	}
	tab.cols = slices.Insert(tab.cols, at, c)
	return nil
}

// alter applies one ALTER TABLE clause. Clauses that do not change the
// columns or the key (indexes, options, partitions) are ignored.
func (tab *table) alter(sp *ast.AlterTableSpec) error {
	switch sp.Tp {
	case ast.AlterTableAddColumns:
		for i, cd := range sp.NewColumns {
			c := tab.columnOf(cd)
			if j := tab.index(c.name); j >= 0 {
				if sp.IfNotExists {
					continue
				}
				// The shape was read after this DDL ran (a start racing a
				// DDL): it already has the column.
				tab.cols = slices.Delete(tab.cols, j, j+1)
			}
			pos := sp.Position
			if i > 0 {
				pos = nil // ADD COLUMN (a, b): in order, at the end
			}
			if err := tab.place(c, pos, -1); err != nil {
				return err
			}
		}
	case ast.AlterTableDropColumn:
		if j := tab.index(sp.OldColumnName.Name.O); j >= 0 {
			tab.cols = slices.Delete(tab.cols, j, j+1)
		}
	case ast.AlterTableModifyColumn, ast.AlterTableChangeColumn:
		oldName := sp.NewColumns[0].Name.Name.O
		if sp.Tp == ast.AlterTableChangeColumn {
			oldName = sp.OldColumnName.Name.O
		}
		j := tab.index(oldName)
		if j < 0 {
			if sp.IfExists {
				return nil
			}
			return fmt.Errorf("%s: no such column", oldName)
		}
		c := tab.columnOf(sp.NewColumns[0])
		c.key = c.key || tab.cols[j].key
		tab.cols = slices.Delete(tab.cols, j, j+1)
		if err := tab.place(c, sp.Position, j); err != nil {
			return err
		}
	case ast.AlterTableRenameColumn:
		j := tab.index(sp.OldColumnName.Name.O)
		if j < 0 {
			return fmt.Errorf("RENAME COLUMN %s: no such column", sp.OldColumnName.Name.O)
		}
		tab.cols[j].name = sp.NewColumnName.Name.O
	case ast.AlterTableAddConstraint:
		if sp.Constraint != nil && sp.Constraint.Tp == ast.ConstraintPrimaryKey {
			tab.setKey(sp.Constraint)
		}
	case ast.AlterTableDropPrimaryKey:
		for i := range tab.cols {
			tab.cols[i].key = false
		}
	case ast.AlterTableOption:
		for _, o := range sp.Options {
			if o.Tp != ast.TableOptionCharset || o.Default {
				continue
			}
			cs := strings.ToLower(o.StrValue)
			if o.UintValue == ast.TableOptionCharsetWithConvertTo {
				// CONVERT TO converts every text column.
				for i := range tab.cols {
					if tab.cols[i].charset != "" {
						tab.cols[i].charset = cs
					}
				}
			}
			tab.charset = cs
		}
	}
	return nil
}

// setKey makes the columns of a PRIMARY KEY constraint the key.
func (tab *table) setKey(c *ast.Constraint) {
	for i := range tab.cols {
		tab.cols[i].key = false
	}
	for _, k := range c.Keys {
		if k.Column == nil {
			continue
		}
		if j := tab.index(k.Column.Name.O); j >= 0 {
			tab.cols[j].key = true
		}
	}
}
