package sqlsink

import (
	"database/sql"
	"errors"
	"fmt"
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
// writes. Integers are BIGINT, and timestamps BIGINT microseconds when
// every one of the batch is a number (see duckKind); every other value is
// VARCHAR, the text appendText renders. The statements cast them to the
// column's type (duckValue). A number is written into the vector by Go,
// while each VARCHAR costs a call into DuckDB and a cast there.
const duckRowsFunc = "tideline_rows"

// Which rows of a group a statement reads.
const (
	pickKeys   = "keys"   // every row of the batch, whatever its group
	pickDirect = "direct" // the creates inserted without a merge
	pickDelete = "delete" // hard deletes
	pickMerge  = "merge"  // the rest, merged with the position guard
)

// duckKind is how tideline_rows hands a table column to DuckDB.
type duckKind uint8

const (
	duckVarchar duckKind = iota // VARCHAR: the rendered text
	duckInt                     // BIGINT: the rendered integer
	duckMicros                  // BIGINT: a timestamp's Unix microseconds, the change's own number
)

// duckRows is a batch rendered for tideline_rows.
type duckRows struct {
	rendered
	kinds  []duckKind // per table column
	groups []group
	// dead marks the rows deleted after they happened (buried); picked
	// holds, for each group, the rows each pick reads (see assign).
	dead   []bool
	picked []map[string][]int
	all    []int // every row, for pickKeys
}

// renderDuck renders the values of b as DuckDB will read them. A value the
// column cannot hold, or text that is not UTF-8 (which DuckDB's VARCHAR
// must be, and which it would take without a word), is that row's fault,
// found before the database is even opened.
func renderDuck(tg target, b *apply.TableBatch, groups []group) (*duckRows, error) {
	for i := range b.Rows {
		if !utf8.Valid(b.Rows[i].Key) {
			return nil, &apply.RowError{Index: i, Err: errors.New("key: not valid UTF-8")}
		}
	}
	rd, err := render(tg.duck(), b, textStyle{zone: true}, func(text []byte, off int) ([]byte, error) {
		if !utf8.Valid(text[off:]) {
			return text, errors.New("not valid UTF-8")
		}
		return text, nil
	})
	if err != nil {
		return nil, err
	}
	r := &duckRows{rendered: rd, groups: groups, dead: make([]bool, len(b.Rows)), all: make([]int, len(b.Rows))}
	for i := range r.all {
		r.all[i] = i
	}
	r.kinds = make([]duckKind, len(b.Table.Columns))
	for j, c := range b.Table.Columns {
		switch c.Logical {
		case change.Int16, change.Int32, change.Int64:
			// appendText let through only integers that fit an int64.
			r.kinds[j] = duckInt
		case change.Timestamp:
			// A number each (not "infinity"): the batch's column is
			// handed over as numbers.
			r.kinds[j] = duckMicros
			for i := range b.Rows {
				if _, ok := r.value(i, j); ok && !plainInt(b.Rows[i].Values[j]) {
					r.kinds[j] = duckVarchar
					break
				}
			}
		}
	}
	return r, nil
}

// assign sorts each group's rows that are not dead to the statements
// that read them: with direct, creates are inserted; deletes are joined;
// the rest (deletes too with soft) are merged. Call it after bury.
func (r *duckRows) assign(direct, soft bool) {
	r.picked = make([]map[string][]int, len(r.groups))
	for n, g := range r.groups {
		p := map[string][]int{}
		for _, i := range g.rows {
			if r.dead[i] {
				continue
			}
			switch op := r.b.Rows[i].Op; {
			case direct && (op == change.OpCreate || op == change.OpRead):
				p[pickDirect] = append(p[pickDirect], i)
			case op == change.OpDelete:
				p[pickDelete] = append(p[pickDelete], i)
				if soft {
					p[pickMerge] = append(p[pickMerge], i)
				}
			default:
				p[pickMerge] = append(p[pickMerge], i)
			}
		}
		r.picked[n] = p
	}
}

// rows returns the rows group n's pick statement reads (of every group if
// n < 0; every row of the batch for pickKeys).
func (r *duckRows) rows(n int, pick string) []int {
	switch {
	case pick == pickKeys:
		return r.all
	case n >= 0:
		return r.picked[n][pick]
	}
	var out []int
	for _, p := range r.picked {
		out = append(out, p[pick]...)
	}
	return out
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
	bigint, err := duckdb.NewTypeInfo(duckdb.TYPE_BIGINT)
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
			src := &duckSource{r: r, varchar: varchar, bigint: bigint}
			for _, name := range strings.Split(names, ",") {
				c, err := duckColumn(name, len(r.b.Table.Columns))
				if err != nil {
					return nil, err
				}
				src.names = append(src.names, name)
				src.cols = append(src.cols, c)
			}
			src.rows = r.rows(int(n), pick)
			return src, nil
		},
	})
}

// duckSource feeds one statement its rows and columns.
type duckSource struct {
	r               *duckRows
	varchar, bigint duckdb.TypeInfo
	names           []string
	cols            []int // see duckColumn
	rows            []int // indexes into the batch's rows
	mu              sync.Mutex
	next            int // the first row no thread took yet
}

func (s *duckSource) ColumnInfos() []duckdb.ColumnInfo {
	out := make([]duckdb.ColumnInfo, len(s.names))
	for k, name := range s.names {
		out[k] = duckdb.ColumnInfo{Name: name, T: s.varchar}
		if c := s.cols[k]; c >= 0 && s.r.kinds[c] != duckVarchar {
			out[k].T = s.bigint
		}
	}
	return out
}

func (s *duckSource) Cardinality() *duckdb.CardinalityInfo {
	return &duckdb.CardinalityInfo{Cardinality: uint(len(s.rows)), Exact: true}
}

// Init lets DuckDB read the rows on each of its threads: each takes a
// vector's worth at a time.
func (s *duckSource) Init() duckdb.ParallelTableSourceInfo {
	return duckdb.ParallelTableSourceInfo{MaxThreads: duckThreads()}
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
	n := 0
	for ; from < to; n, from = n+1, from+1 {
		i := s.rows[from]
		row := &s.r.b.Rows[i]
		for k, col := range s.cols {
			var err error
			switch {
			case col == -1:
				err = duckdb.SetChunkValue(c, k, n, row.Key)
			case col == -2:
				err = duckdb.SetChunkValue(c, k, n, row.Order)
			case col == -3:
				err = duckdb.SetChunkValue(c, k, n, duckOps[row.Op])
			default:
				if v, ok := s.r.value(i, col); ok {
					switch s.r.kinds[col] {
					case duckInt:
						err = setInt(c, k, n, v)
					case duckMicros:
						err = setInt(c, k, n, row.Values[col])
					default:
						err = duckdb.SetChunkValue(c, k, n, v)
					}
				} else {
					err = c.SetValue(k, n, nil)
				}
			}
			if err != nil {
				return err
			}
		}
	}
	return c.SetSize(n)
}

// setInt sets a BIGINT value from its decimal text.
func setInt(c duckdb.DataChunk, k, n int, text []byte) error {
	x, err := parseInt(text)
	if err != nil {
		return fmt.Errorf("%s: %w", duckRowsFunc, err)
	}
	return duckdb.SetChunkValue(c, k, n, x)
}
