package sqlsink

import (
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	duckdb "github.com/duckdb/duckdb-go/v2"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// A batch reaches DuckDB through a table function of the sink's
// connection, tideline_rows(group, pick, columns): DuckDB pulls the
// batch's rows from Go in vectors of 2048, with no file or text format in
// between, and each statement reads only the rows (pick) and columns it
// writes. Every value is
// VARCHAR, the text appendText renders; the statements cast it to the
// column's type (duckValue).
const duckRowsFunc = "tideline_rows"

// Which rows of a group a statement reads.
const (
	pickKeys   = "keys"   // every row of the batch, whatever its group
	pickDirect = "direct" // the creates inserted without a merge
	pickDelete = "delete" // hard deletes
	pickMerge  = "merge"  // the rest, merged with the position guard
)

// duckRows is a batch rendered for tideline_rows.
type duckRows struct {
	b      *apply.TableBatch
	groups []group
	text   []byte // every value's text, one after the other
	// vals holds, for row i and column j, the span of text at
	// i*len(columns)+j; a NULL (or a value the row does not carry) has
	// end -1.
	vals []span
	// group of each row; dead marks the rows deleted after they happened
	// (buried); direct is the current attempt's choice of direct inserts.
	group  []int
	dead   []bool
	direct bool
	soft   bool
}

type span struct{ off, end int }

// renderDuck renders the values of b as DuckDB will read them. A value the
// column cannot hold is that row's fault, found before the database is
// even opened.
func renderDuck(tg target, b *apply.TableBatch, groups []group, soft bool) (*duckRows, error) {
	cols := b.Table.Columns
	size := 0
	for i := range b.Rows {
		for _, v := range b.Rows[i].Values {
			size += len(v)
		}
	}
	r := &duckRows{
		b: b, groups: groups, soft: soft,
		text:  make([]byte, 0, size),
		vals:  make([]span, len(b.Rows)*len(cols)),
		group: make([]int, len(b.Rows)),
		dead:  make([]bool, len(b.Rows)),
	}
	st := textStyle{zone: true}
	for n, g := range groups {
		for _, i := range g.rows {
			r.group[i] = n
			row := &b.Rows[i]
			if !utf8.Valid(row.Key) {
				return nil, &apply.RowError{Index: i, Err: errors.New("key: not valid UTF-8")}
			}
			vals := r.vals[i*len(cols) : (i+1)*len(cols)]
			for j, v := range row.Values {
				c := &cols[j]
				vals[j] = span{end: -1}
				if absent(v) {
					if c.Key {
						return nil, keyAbsent(i, tg.duck(), c.Name)
					}
					continue // never read by its group's statements
				}
				off := len(r.text)
				out, null, err := appendText(r.text, v, c.Logical, st)
				if err != nil {
					return nil, &apply.RowError{Index: i, Err: fmt.Errorf("column %s: %w", c.Name, err)}
				}
				r.text = out
				if null {
					continue
				}
				if !utf8.Valid(r.text[off:]) {
					return nil, &apply.RowError{Index: i, Err: fmt.Errorf("column %s: not valid UTF-8", c.Name)}
				}
				vals[j] = span{off: off, end: len(r.text)}
			}
		}
	}
	return r, nil
}

// picks reports whether row i is one of group n's pick rows (of any
// group's if n < 0).
func (r *duckRows) picks(i, n int, pick string) bool {
	if pick == pickKeys {
		return true
	}
	if r.dead[i] || (n >= 0 && r.group[i] != n) {
		return false
	}
	op := r.b.Rows[i].Op
	create := op == change.OpCreate || op == change.OpRead
	switch pick {
	case pickDirect:
		return r.direct && create
	case pickDelete:
		return op == change.OpDelete
	case pickMerge:
		return !(r.direct && create) && (r.soft || op != change.OpDelete)
	}
	return false
}

// count is how many rows of group n (every group if n < 0) a statement
// reading pick would see.
func (r *duckRows) count(n int, pick string) int {
	c := 0
	for i := range r.b.Rows {
		if r.picks(i, n, pick) {
			c++
		}
	}
	return c
}

// duckRowsSQL is the FROM item that reads the columns cols (_k, _pos,
// _op, c<j>) of group n's pick rows. A statement asks for just the
// columns it reads: setting a value of a column DuckDB did not project
// costs more than a projected one.
func duckRowsSQL(n int, pick string, cols ...string) string {
	return fmt.Sprintf("%s(%d, '%s', '%s')", duckRowsFunc, n, pick, strings.Join(cols, ","))
}

// Columns of tideline_rows besides the table's c<j>.
const (
	duckKey      = "_k"
	duckPosition = "_pos"
	duckOp       = "_op"
)

// duckColumn is a column of tideline_rows: -1 for _k, -2 _pos, -3 _op,
// else the table column's index.
func duckColumn(name string, ncols int) (int, error) {
	switch name {
	case duckKey:
		return -1, nil
	case duckPosition:
		return -2, nil
	case duckOp:
		return -3, nil
	}
	if j, err := strconv.Atoi(strings.TrimPrefix(name, "c")); err == nil && strings.HasPrefix(name, "c") && j >= 0 && j < ncols {
		return j, nil
	}
	return 0, fmt.Errorf("%s: no column %q", duckRowsFunc, name)
}

// registerRows registers tideline_rows on conn; it reads the batch cur
// returns, which is set while the sink applies one.
func registerRows(conn *sql.Conn, cur func() *duckRows) error {
	varchar, err := duckdb.NewTypeInfo(duckdb.TYPE_VARCHAR)
	if err != nil {
		return err
	}
	integer, err := duckdb.NewTypeInfo(duckdb.TYPE_INTEGER)
	if err != nil {
		return err
	}
	return duckdb.RegisterTableUDF(conn, duckRowsFunc, duckdb.ParallelChunkTableFunction{
		Config: duckdb.TableFunctionConfig{Arguments: []duckdb.TypeInfo{integer, varchar, varchar}},
		BindArguments: func(_ map[string]any, args ...any) (duckdb.ParallelChunkTableSource, error) {
			r := cur()
			if r == nil {
				return nil, fmt.Errorf("%s: no batch is being applied", duckRowsFunc)
			}
			n, _ := args[0].(int32)
			pick, _ := args[1].(string)
			if !slices.Contains([]string{pickKeys, pickDirect, pickDelete, pickMerge}, pick) {
				return nil, fmt.Errorf("%s: no pick %q", duckRowsFunc, pick)
			}
			names, _ := args[2].(string)
			src := &duckSource{r: r, varchar: varchar}
			for _, name := range strings.Split(names, ",") {
				c, err := duckColumn(name, len(r.b.Table.Columns))
				if err != nil {
					return nil, err
				}
				src.names = append(src.names, name)
				src.cols = append(src.cols, c)
			}
			for i := range r.b.Rows {
				if r.picks(i, int(n), pick) {
					src.rows = append(src.rows, i)
				}
			}
			return src, nil
		},
	})
}

// duckSource feeds one statement its rows and columns.
type duckSource struct {
	r       *duckRows
	varchar duckdb.TypeInfo
	names   []string
	cols    []int // see duckColumn
	rows    []int // indexes into the batch's rows
	mu      sync.Mutex
	next    int // the first row no thread took yet
}

func (s *duckSource) ColumnInfos() []duckdb.ColumnInfo {
	out := make([]duckdb.ColumnInfo, len(s.names))
	for k, name := range s.names {
		out[k] = duckdb.ColumnInfo{Name: name, T: s.varchar}
	}
	return out
}

func (s *duckSource) Cardinality() *duckdb.CardinalityInfo {
	return &duckdb.CardinalityInfo{Cardinality: uint(len(s.rows)), Exact: true}
}

// Init lets DuckDB read the rows on more than one thread: each takes a
// vector's worth at a time.
func (s *duckSource) Init() duckdb.ParallelTableSourceInfo {
	return duckdb.ParallelTableSourceInfo{MaxThreads: runtime.GOMAXPROCS(0)}
}

func (s *duckSource) NewLocalState() any { return nil }

// duckOps holds each op's text, so that no row allocates its own.
var duckOps = func() (t [256][]byte) {
	for i := range t {
		t[i] = []byte{byte(i)}
	}
	return t
}()

func (s *duckSource) FillChunk(_ any, c duckdb.DataChunk) error {
	capacity := duckdb.GetDataChunkCapacity()
	s.mu.Lock()
	from := s.next
	s.next = min(from+capacity, len(s.rows))
	to := s.next
	s.mu.Unlock()
	ncols := len(s.r.b.Table.Columns)
	n := 0
	for ; from < to; n, from = n+1, from+1 {
		i := s.rows[from]
		row := &s.r.b.Rows[i]
		vals := s.r.vals[i*ncols : (i+1)*ncols]
		for k, col := range s.cols {
			var err error
			switch {
			case col == -1:
				err = duckdb.SetChunkValue(c, k, n, row.Key)
			case col == -2:
				err = duckdb.SetChunkValue(c, k, n, row.Order)
			case col == -3:
				err = duckdb.SetChunkValue(c, k, n, duckOps[row.Op])
			case vals[col].end < 0:
				err = c.SetValue(k, n, nil)
			default:
				err = duckdb.SetChunkValue(c, k, n, s.r.text[vals[col].off:vals[col].end])
			}
			if err != nil {
				return err
			}
		}
	}
	return c.SetSize(n)
}
