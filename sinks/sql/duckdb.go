package sqlsink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	duckdb "github.com/duckdb/duckdb-go/v2"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// DuckDB writes to a DuckDB database file: DuckDB reads the batch's rows
// from Go through a table function (tideline_rows); creates are inserted
// (INSERT), the other rows merged with INSERT … ON CONFLICT DO UPDATE
// guarded by _tideline_position, in one transaction per batch.
//
// DuckDB lets one process write a file, so the sink uses a single
// connection. Unless cfg.KeepOpen, it opens the file at the start of each
// Apply and closes it at the end, so that other processes (a user's
// query, QueryDuckDB) can open it between batches.
type DuckDB struct {
	cfg  Config
	log  *zap.Logger
	db   *sql.DB   // nil while the file is closed
	conn *sql.Conn // the one connection of db
	// jsonType is JSON when the build has the json extension, else
	// VARCHAR; set at the first open.
	jsonType string
	tables   map[target]*duckTable
	// cur is the batch being applied, which tideline_rows reads.
	cur *duckRows
}

var _ apply.Sink = (*DuckDB)(nil)

// duckTable is what the sink knows of a target table.
type duckTable struct {
	// cols maps lower-cased column names (DuckDB matches identifiers
	// case-insensitively) to information_schema's data_type; nil until
	// read, or after an error that suggests the table changed under us.
	cols map[string]string
	// stuck holds columns DuckDB would not widen (an index depends on
	// them), so that every batch does not try again.
	stuck map[string]bool
	// pause counts down the batches still merged without direct inserts
	// (see directPause).
	pause int
	// tombs tells whether the tombstone table has rows of this table:
	// unless it has, no change can be buried and no batch needs to look.
	// Found out after each open; set when the sink writes tombstones.
	tombs tombState
}

type tombState int

const (
	tombsUnknown tombState = iota
	tombsNone
	tombsSome
)

// NewDuckDB returns a sink writing to the database file cfg.Path,
// creating its directory. The file itself is opened by the first Apply,
// as the PostgreSQL pool connects lazily: a file another process holds
// only costs retries.
func NewDuckDB(ctx context.Context, cfg Config, log *zap.Logger) (*DuckDB, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("sink %s: path: a DuckDB database file is required", cfg.Name)
	}
	if dir := filepath.Dir(cfg.Path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("sink %s: path %s: %w", cfg.Name, cfg.Path, err)
		}
	}
	if cfg.TableFormat == "" {
		cfg.TableFormat = DefaultTableFormat("duckdb")
	}
	return &DuckDB{cfg: cfg, log: log, tables: map[target]*duckTable{}}, nil
}

// Close implements apply.Sink. It may be called more than once.
func (d *DuckDB) Close() error { return d.close() }

func (d *DuckDB) open(ctx context.Context) error {
	if d.db != nil {
		return nil
	}
	c, err := duckdb.NewConnector(d.cfg.Path, nil)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.cfg.Path, err)
	}
	db := sql.OpenDB(c) // db.Close closes c
	conn, err := db.Conn(ctx)
	if err == nil {
		// With ICU loaded the session zone decides how TIMESTAMPTZ is
		// shown and how zone-less text is read; UTC is what the other
		// dialects store.
		_, err = conn.ExecContext(ctx, "SET TimeZone = 'UTC'")
	}
	if err == nil {
		// DuckDB checkpoints after every commit that grew the WAL past
		// 16 MB, rewriting the row groups a batch of updates touched:
		// that was most of a batch's time. Let the WAL grow further; it
		// is checkpointed when the file is closed anyway.
		_, err = conn.ExecContext(ctx, "SET checkpoint_threshold = '512MB'")
	}
	if err == nil {
		// DuckDB's threads spin while they wait for work, and the runtime
		// decodes the next batch while this one is written: leave the
		// decoding a core. (On 2 cores, 1 thread wrote make bench's
		// batches faster than 2.)
		_, err = conn.ExecContext(ctx, fmt.Sprintf("SET threads = %d", duckThreads()))
	}

	if err == nil {
		err = registerRows(conn, func() *duckRows { return d.cur })
	}
	if err == nil && d.jsonType == "" {
		_, jerr := conn.ExecContext(ctx, "SELECT CAST('{}' AS JSON)")
		switch {
		case jerr == nil:
			d.jsonType = "JSON"
		case ctx.Err() != nil:
			err = ctx.Err() // no answer: ask again on the next open
		default:
			d.jsonType = "VARCHAR"
			d.log.Info("duckdb has no json extension: json and array columns are VARCHAR", zap.String("path", d.cfg.Path), zap.Error(jerr))
		}
	}
	if err != nil {
		if conn != nil {
			conn.Close() //nolint:errcheck // the open error is the one to report
		}
		db.Close() //nolint:errcheck
		return fmt.Errorf("open %s: %w", d.cfg.Path, err)
	}
	d.db, d.conn = db, conn
	for _, dt := range d.tables {
		dt.tombs = tombsUnknown
		if !d.cfg.KeepOpen {
			// Between batches the file was anyone's: a user may have
			// dropped or altered a table, so check each table again.
			dt.cols = nil
		}
	}
	return nil
}

// duckThreads is how many threads DuckDB may use: all cores but one.
func duckThreads() int { return max(1, runtime.GOMAXPROCS(0)-1) }

func (d *DuckDB) close() error {
	if d.db == nil {
		return nil
	}
	err := errors.Join(d.conn.Close(), d.db.Close())
	d.db, d.conn = nil, nil
	if err != nil {
		return fmt.Errorf("close %s: %w", d.cfg.Path, err)
	}
	return nil
}

func duckIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func (t target) duck() string {
	if t.schema == "" {
		return duckIdent(t.name)
	}
	return duckIdent(t.schema) + "." + duckIdent(t.name)
}

func (t target) duckTombstones() string {
	if t.schema == "" {
		return duckIdent(tombstones)
	}
	return duckIdent(t.schema) + "." + duckIdent(tombstones)
}

// duckType maps a column to its DuckDB type.
func (d *DuckDB) duckType(c change.Column) string {
	switch c.Logical {
	case change.Int16:
		return "SMALLINT"
	case change.Int32:
		return "INTEGER"
	case change.Int64:
		return "BIGINT"
	case change.Uint64:
		return "UBIGINT"
	case change.Decimal:
		// DuckDB's DECIMAL stops at 38 digits; wider or unconstrained
		// numerics stay text so that no digit is lost.
		if p, s, ok := change.Precision(c.Type); ok && p <= 38 && s >= 0 && s <= p {
			return fmt.Sprintf("DECIMAL(%d,%d)", p, s)
		}
		return "VARCHAR"
	case change.Float32:
		return "REAL"
	case change.Float64:
		return "DOUBLE"
	case change.Bool:
		return "BOOLEAN"
	case change.Bytes:
		return "BLOB"
	case change.JSON, change.Array:
		return d.jsonType
	case change.UUID:
		return "UUID"
	case change.Date:
		return "DATE"
	case change.Time:
		return "TIME"
	case change.Timestamp:
		return "TIMESTAMP"
	case change.TimestampTZ:
		return "TIMESTAMPTZ"
	case change.TimeTZ:
		return "TIMETZ"
	}
	// Interval too: DuckDB cannot cast ISO-8601 durations
	// ("P1Y2M3DT4H5M6.5S"), so they stay the source's text.
	return "VARCHAR"
}

// duckDataType is information_schema's data_type of a type we create.
func duckDataType(typ string) string {
	switch typ {
	case "REAL":
		return "FLOAT"
	case "TIMESTAMPTZ":
		return "TIMESTAMP WITH TIME ZONE"
	case "TIMETZ":
		return "TIME WITH TIME ZONE"
	}
	return typ
}

// duckRank orders the data types a column may be widened through; 0 means
// not widenable. Ranks in different tens do not mix.
var duckRank = map[string]int{"SMALLINT": 1, "INTEGER": 2, "BIGINT": 3, "UBIGINT": 4, "HUGEINT": 5, "FLOAT": 11, "DOUBLE": 12}

// duckWiden returns the type a column of data type have must become to hold
// want's values, if it must change.
func duckWiden(have, want string) (string, bool) {
	h, w := duckRank[have], duckRank[duckDataType(want)]
	if h == 0 || w <= h || w/10 != h/10 {
		return "", false
	}
	if want == "UBIGINT" {
		// A signed column whose source became unsigned: only HUGEINT
		// holds both the old negative and the new large values.
		return "HUGEINT", true
	}
	return want, true
}

// covers reports whether the target has every column of t with a type at
// least as wide (or one we could not widen).
func (d *DuckDB) covers(dt *duckTable, t *change.Table) bool {
	if dt.cols == nil {
		return false
	}
	for _, c := range t.Columns {
		n := strings.ToLower(c.Name)
		have, ok := dt.cols[n]
		if !ok {
			return false
		}
		if _, ok := duckWiden(have, d.duckType(c)); ok && !dt.stuck[n] {
			return false
		}
	}
	return true
}

// ensure creates the target table, its tombstone table, and the columns it
// lacks; it widens columns whose source type grew.
func (d *DuckDB) ensure(ctx context.Context, tg target, t *change.Table) (*duckTable, error) {
	dt := d.tables[tg]
	if dt == nil {
		dt = &duckTable{stuck: map[string]bool{}}
		d.tables[tg] = dt
	}
	if d.covers(dt, t) {
		return dt, nil
	}
	var stmts []string
	if tg.schema != "" {
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS "+duckIdent(tg.schema))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s (", tg.duck())
	var keys []string
	for _, c := range t.Columns {
		fmt.Fprintf(&b, "%s %s, ", duckIdent(c.Name), d.duckType(c))
		if c.Key {
			keys = append(keys, duckIdent(c.Name))
		}
	}
	fmt.Fprintf(&b, "%s VARCHAR NOT NULL, %s VARCHAR NOT NULL, %s TIMESTAMPTZ NOT NULL", colPosition, colOp, colAppliedAt)
	if d.cfg.SoftDelete {
		fmt.Fprintf(&b, ", %s BOOLEAN NOT NULL DEFAULT false", colDeleted)
	}
	fmt.Fprintf(&b, ", PRIMARY KEY (%s))", strings.Join(keys, ", "))
	stmts = append(stmts, b.String(),
		fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (table_name VARCHAR NOT NULL, key VARCHAR NOT NULL, position VARCHAR NOT NULL, PRIMARY KEY (table_name, key))", tg.duckTombstones()))
	for _, s := range stmts {
		if _, err := d.conn.ExecContext(ctx, s); err != nil {
			return nil, fmt.Errorf("create %s: %w", tg.duck(), classifyDuck(err))
		}
	}

	cols, err := d.columns(ctx, tg)
	if err != nil {
		return nil, err
	}
	altered := false
	for _, c := range t.Columns {
		want := d.duckType(c)
		n := strings.ToLower(c.Name)
		have, ok := cols[n]
		if !ok {
			altered = true
			if _, err := d.conn.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s", tg.duck(), duckIdent(c.Name), want)); err != nil {
				return nil, fmt.Errorf("add column %s to %s: %w", c.Name, tg.duck(), classifyDuck(err))
			}
			d.log.Info("target column added", zap.String("table", tg.duck()), zap.String("column", c.Name), zap.String("type", want))
			continue
		}
		to, ok := duckWiden(have, want)
		if !ok || dt.stuck[n] {
			continue
		}
		_, err := d.conn.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE %s", tg.duck(), duckIdent(c.Name), to))
		switch {
		case err == nil:
			altered = true
			d.log.Info("target column widened", zap.String("table", tg.duck()), zap.String("column", c.Name), zap.String("from", have), zap.String("to", to))
		case duckIndexBlocks(err):
			// DuckDB cannot retype a column an index (the primary key, or
			// one a user made) depends on. Values that fit still apply;
			// others fail as data errors, row by row.
			dt.stuck[n] = true
			d.log.Warn("target column not widened: an index depends on it", zap.String("table", tg.duck()), zap.String("column", c.Name), zap.String("from", have), zap.String("to", to), zap.Error(err))
		default:
			return nil, fmt.Errorf("widen column %s of %s to %s: %w", c.Name, tg.duck(), to, classifyDuck(err))
		}
	}
	if altered {
		if cols, err = d.columns(ctx, tg); err != nil {
			return nil, err
		}
	}
	dt.cols = cols
	return dt, nil
}

// duckIndexBlocks reports whether an ALTER TYPE failed because an index
// depends on the column or its table.
func duckIndexBlocks(err error) bool {
	var de *duckdb.Error
	if !errors.As(err, &de) {
		return false
	}
	return strings.Contains(de.Msg, "an index depends on it") ||
		strings.Contains(de.Msg, "entries that depend on it") ||
		strings.Contains(de.Msg, "UNIQUE or PRIMARY KEY")
}

func (d *DuckDB) columns(ctx context.Context, tg target) (map[string]string, error) {
	schema := tg.schema
	if schema == "" {
		schema = "main"
	}
	rows, err := d.conn.QueryContext(ctx, `SELECT column_name, data_type FROM information_schema.columns
		WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?`, schema, tg.name)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.duck(), classifyDuck(err))
	}
	defer rows.Close()
	cols := map[string]string{}
	for rows.Next() {
		var n, t string
		if err := rows.Scan(&n, &t); err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", tg.duck(), err)
		}
		cols[strings.ToLower(n)] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.duck(), classifyDuck(err))
	}
	return cols, nil
}

// duckValue is the SQL expression that turns what tideline_rows gives
// (staged, of kind k) into the column's type.
func (d *DuckDB) duckValue(c change.Column, k duckKind, staged string) string {
	switch typ := d.duckType(c); {
	case k == duckMicros:
		return "make_timestamp(" + staged + ")"
	case c.Logical == change.Bytes:
		return "from_base64(" + staged + ")"
	case typ == "TIMETZ":
		// DuckDB reads "+00" but not the "Z" of ISO-8601 UTC times.
		return "CAST(replace(" + staged + ", 'Z', '+00') AS TIMETZ)"
	case typ == "VARCHAR":
		return staged
	default:
		return "CAST(" + staged + " AS " + typ + ")"
	}
}

// Apply implements apply.Sink.
func (d *DuckDB) Apply(ctx context.Context, b *apply.TableBatch) (err error) {
	if !b.Table.HasKey {
		return apply.Reject(errNoKey)
	}
	tg, err := resolveTarget(d.cfg.TableFormat, b.Table)
	if err != nil {
		return apply.Reject(err)
	}
	dt := d.tables[tg]
	direct := b.Truncate == nil && (dt == nil || dt.pause == 0)
	if dt != nil && dt.pause > 0 {
		dt.pause--
	}
	// Render every value first: a value the column cannot hold is that
	// row's fault, found before the file is even opened. DuckDB reads
	// the rendered rows through tideline_rows. The earlier way, a CSV
	// file that DuckDB's reader loaded into a staging table, spent about
	// a quarter more time per batch in make bench.
	rows, err := renderDuck(tg, b, groupByPresence(b.Rows))
	if err != nil {
		return err
	}
	d.cur = rows
	defer func() { d.cur = nil }()

	if err := d.open(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if !d.cfg.KeepOpen {
		defer func() {
			if cerr := d.close(); err == nil {
				err = cerr
			}
		}()
	}
	err = d.apply(ctx, tg, rows, direct)
	if errors.Is(err, errKeyTaken) {
		// A create's key has a target row (a replay): merge them all,
		// and do so for the table's next batches too.
		d.tables[tg].pause = directPause // ensure made it
		err = d.apply(ctx, tg, rows, false)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.cfg.KeepOpen && !apply.IsPermanent(err) {
			// DuckDB invalidates a database after a fatal error (a failed
			// write); the retry reopens the file rather than failing on
			// it forever.
			d.close() //nolint:errcheck // err is the one to report
		}
		return err
	}
	return nil
}

func (d *DuckDB) apply(ctx context.Context, tg target, r *duckRows, direct bool) error {
	b := r.b
	if _, err := d.ensure(ctx, tg, b.Table); err != nil {
		return err
	}
	if _, err := d.conn.ExecContext(ctx, "BEGIN TRANSACTION"); err != nil {
		return fmt.Errorf("begin on %s: %w", d.cfg.Path, classifyDuck(err))
	}
	done := false
	defer func() {
		if !done {
			d.conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK") //nolint:errcheck // the failure is already reported
		}
	}()
	if len(r.groups) > 0 {
		if err := d.bury(ctx, tg, r); err != nil {
			return err
		}
	}
	r.assign(direct, d.cfg.SoftDelete)
	if b.Truncate != nil {
		if err := d.truncate(ctx, tg, b.Truncate); err != nil {
			return err
		}
	}
	for n, g := range r.groups {
		if direct {
			if err := d.insertGroup(ctx, tg, r, n, g); err != nil {
				return err
			}
		}
		if err := d.applyGroup(ctx, tg, r, n, g); err != nil {
			return err
		}
	}
	if _, err := d.conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit to %s: %w", tg.duck(), classifyDuck(err))
	}
	done = true
	return nil
}

// bury marks the rows that are not newer than their key's tombstone or
// the table's last truncate: they were deleted after they happened, and
// no statement reads them.
func (d *DuckDB) bury(ctx context.Context, tg target, r *duckRows) error {
	clear(r.dead)
	dt := d.tables[tg]
	if dt.tombs == tombsUnknown {
		var some bool
		err := d.conn.QueryRowContext(ctx, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s WHERE table_name = ?)", tg.duckTombstones()), tg.name).Scan(&some)
		if err != nil {
			return fmt.Errorf("read the tombstones of %s: %w", tg.duck(), classifyDuck(err))
		}
		dt.tombs = tombsNone
		if some {
			dt.tombs = tombsSome
		}
	}
	if dt.tombs == tombsNone {
		return nil
	}
	// A join, not key IN (…): with no tombstones DuckDB does not even
	// read the batch.
	rows, err := d.conn.QueryContext(ctx, fmt.Sprintf(`SELECT t.key, t.position FROM %[1]s t JOIN %[2]s s ON t.key = s._k WHERE t.table_name = ?
		UNION ALL SELECT key, position FROM %[1]s WHERE table_name = ? AND key = ?`,
		tg.duckTombstones(), duckRowsSQL(0, pickKeys, duckKey)), tg.name, tg.name, truncateKey)
	if err != nil {
		return fmt.Errorf("read the tombstones of %s: %w", tg.duck(), classifyDuck(err))
	}
	defer rows.Close()
	buried := map[string]string{}
	for rows.Next() {
		var k, pos string
		if err := rows.Scan(&k, &pos); err != nil {
			return fmt.Errorf("read the tombstones of %s: %w", tg.duck(), err)
		}
		buried[k] = pos
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read the tombstones of %s: %w", tg.duck(), classifyDuck(err))
	}
	if len(buried) > 0 {
		for i, keep := range filterBuried(r.b, buried) {
			r.dead[i] = !keep
		}
	}
	return nil
}

func (d *DuckDB) truncate(ctx context.Context, tg target, order []byte) error {
	q := fmt.Sprintf("DELETE FROM %s WHERE %s < ?", tg.duck(), colPosition)
	args := []any{string(order)}
	if d.cfg.SoftDelete {
		q = fmt.Sprintf("UPDATE %s SET %s = true, %s = 't', %s = ?, %s = now() WHERE %s < ?",
			tg.duck(), colDeleted, colOp, colPosition, colAppliedAt, colPosition)
		args = append(args, string(order))
	}
	if _, err := d.conn.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("truncate %s: %w", tg.duck(), classifyDuck(err))
	}
	_, err := d.conn.ExecContext(ctx, fmt.Sprintf(`INSERT INTO %s AS x (table_name, key, position) VALUES (?, ?, ?)
		ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position WHERE x.position < EXCLUDED.position`, tg.duckTombstones()),
		tg.name, truncateKey, string(order))
	if err != nil {
		return fmt.Errorf("record the truncate of %s: %w", tg.duck(), classifyDuck(err))
	}
	d.tables[tg].tombs = tombsSome
	return nil
}

// insertGroup inserts the creates of the n-th group: a create's key has
// no target row unless the change is applied again (a replay), so a plain
// INSERT needs no merge (the tombstones were checked). If a key does have
// a row, the constraint violation aborts the transaction: errKeyTaken (as
// in the PostgreSQL sink), and Apply merges the batch instead.
func (d *DuckDB) insertGroup(ctx context.Context, tg target, r *duckRows, n int, g group) error {
	if len(r.rows(n, pickDirect)) == 0 {
		return nil
	}
	var names, values, read []string
	for j, c := range r.b.Table.Columns {
		if g.present[j] {
			names = append(names, duckIdent(c.Name))
			values = append(values, d.duckValue(c, r.kinds[j], fmt.Sprintf("s.c%d", j)))
			read = append(read, fmt.Sprintf("c%d", j))
		}
	}
	names = append(names, colPosition, colOp, colAppliedAt)
	values = append(values, "s._pos", "s._op", "now()")
	read = append(read, duckPosition, duckOp)
	q := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s s",
		tg.duck(), strings.Join(names, ", "), strings.Join(values, ", "), duckRowsSQL(n, pickDirect, read...))
	if _, err := d.conn.ExecContext(ctx, q); err != nil {
		var de *duckdb.Error
		if errors.As(err, &de) && de.Type == duckdb.ErrorTypeConstraint && strings.Contains(de.Msg, "Duplicate key") {
			return fmt.Errorf("%w: %v", errKeyTaken, err)
		}
		return fmt.Errorf("insert into %s: %w", tg.duck(), classifyDuck(err))
	}
	return nil
}

// applyGroup merges the rows of the n-th group: deletes, then upserts.
// With direct, its creates were inserted by insertGroup; without, they
// are merged too.
func (d *DuckDB) applyGroup(ctx context.Context, tg target, r *duckRows, n int, g group) error {
	b := r.b
	var keyMatch, names, values, sets, keys, read, keyRead []string
	for j, c := range b.Table.Columns {
		if !g.present[j] {
			continue
		}
		v := d.duckValue(c, r.kinds[j], fmt.Sprintf("s.c%d", j))
		names = append(names, duckIdent(c.Name))
		values = append(values, v)
		read = append(read, fmt.Sprintf("c%d", j))
		if c.Key {
			keyMatch = append(keyMatch, fmt.Sprintf("t.%s = %s", duckIdent(c.Name), v))
			keys = append(keys, duckIdent(c.Name))
			keyRead = append(keyRead, fmt.Sprintf("c%d", j))
		} else {
			// DuckDB cannot update indexed columns in ON CONFLICT DO
			// UPDATE; keys never change there anyway.
			sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", duckIdent(c.Name)))
		}
	}
	if len(keyMatch) < len(keyColumns(b.Table)) {
		// Apply rejects the rows that lack a key column before writing.
		return apply.Permanent(fmt.Errorf("changes of %s lack key columns", tg.duck()))
	}
	if !d.cfg.SoftDelete && len(r.rows(n, pickDelete)) > 0 {
		del := fmt.Sprintf("DELETE FROM %s AS t USING %s s WHERE %s AND t.%s < s._pos",
			tg.duck(), duckRowsSQL(n, pickDelete, append(keyRead, duckPosition)...), strings.Join(keyMatch, " AND "), colPosition)
		if _, err := d.conn.ExecContext(ctx, del); err != nil {
			return fmt.Errorf("delete from %s: %w", tg.duck(), classifyDuck(err))
		}
		tomb := fmt.Sprintf(`INSERT INTO %s AS x (table_name, key, position) SELECT ?, s._k, s._pos FROM %s s
			ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position WHERE x.position < EXCLUDED.position`,
			tg.duckTombstones(), duckRowsSQL(n, pickDelete, duckKey, duckPosition))
		if _, err := d.conn.ExecContext(ctx, tomb, tg.name); err != nil {
			return fmt.Errorf("record the deletes of %s: %w", tg.duck(), classifyDuck(err))
		}
		d.tables[tg].tombs = tombsSome
	}
	if len(r.rows(n, pickMerge)) == 0 {
		return nil
	}

	names = append(names, colPosition, colOp, colAppliedAt)
	values = append(values, "s._pos", "s._op", "now()")
	for _, m := range []string{colPosition, colOp, colAppliedAt} {
		sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", m))
	}
	if d.cfg.SoftDelete {
		names = append(names, colDeleted)
		values = append(values, "s._op = 'd'")
		sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", colDeleted))
	}
	up := fmt.Sprintf(`INSERT INTO %s AS t (%s) SELECT %s FROM %s s
		ON CONFLICT (%s) DO UPDATE SET %s WHERE t.%s < EXCLUDED.%s`,
		tg.duck(), strings.Join(names, ", "), strings.Join(values, ", "), duckRowsSQL(n, pickMerge, append(read, duckPosition, duckOp)...),
		strings.Join(keys, ", "), strings.Join(sets, ", "), colPosition, colPosition)
	if _, err := d.conn.ExecContext(ctx, up); err != nil {
		return fmt.Errorf("merge into %s: %w", tg.duck(), classifyDuck(err))
	}
	return nil
}

// classifyDuck marks errors about the data (a value the column type
// rejects, out of range, a constraint) permanent; everything else (I/O, a
// file another process locks, an interrupt) is transient.
func classifyDuck(err error) error {
	var de *duckdb.Error
	if errors.As(err, &de) {
		switch de.Type {
		case duckdb.ErrorTypeConversion, duckdb.ErrorTypeOutOfRange, duckdb.ErrorTypeInvalidInput,
			duckdb.ErrorTypeConstraint, duckdb.ErrorTypeMismatchType:
			return apply.Permanent(err)
		}
	}
	return err
}

// duckLockWait is how long QueryDuckDB waits for a writer to release the
// file.
const duckLockWait = 10 * time.Second

// InMemory, as QueryDuckDB's path, queries no database file: an in-memory
// DuckDB, for queries over files such as read_parquet('…').
const InMemory = ":memory:"

// QueryDuckDB runs query on the database file at path, opened read-only,
// and writes the result to w as an aligned text table. While another
// process (the sink) holds the file it retries, for up to 10 s.
func QueryDuckDB(ctx context.Context, path, query string, w io.Writer) error {
	return queryDuckDB(ctx, path, query, w, nil)
}

// queryDuckDB is QueryDuckDB; waiting, if not nil, is called each time it
// finds the file locked, before it waits, so that a test can release the
// file once the query is waiting for it.
func queryDuckDB(ctx context.Context, path, query string, w io.Writer, waiting func()) error {
	var db *sql.DB
	if path == "" || path == InMemory {
		// No file: a query over Parquet files (read_parquet) and the like.
		c, err := duckdb.NewConnector("", nil)
		if err != nil {
			return fmt.Errorf("query: %w", err)
		}
		db = sql.OpenDB(c)
	} else {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("query %s: %w", path, err)
		}
		var err error
		if db, err = duckOpenReadOnly(ctx, path, waiting); err != nil {
			return err
		}
	}
	defer db.Close() //nolint:errcheck // read-only: nothing to lose
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("query %s: %w", path, err)
	}
	defer conn.Close() //nolint:errcheck
	if _, err := conn.ExecContext(ctx, "SET TimeZone = 'UTC'"); err != nil {
		return fmt.Errorf("query %s: %w", path, err)
	}
	// DuckDB renders every value as its own text when the query is
	// wrapped; statements that cannot be wrapped (PRAGMA, several
	// statements) run as they are, their values printed by Go.
	q := strings.TrimRight(strings.TrimSpace(query), "; \t\n")
	rows, err := conn.QueryContext(ctx, "SELECT COLUMNS(*)::VARCHAR FROM ("+q+")")
	if err != nil {
		rows, err = conn.QueryContext(ctx, query)
	}
	if err != nil {
		return fmt.Errorf("query %s: %w", path, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return fmt.Errorf("query %s: %w", path, err)
	}
	out := [][]string{cols}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return fmt.Errorf("query %s: %w", path, err)
		}
		line := make([]string, len(cols))
		for i, v := range vals {
			switch v := v.(type) {
			case nil:
				line[i] = "NULL"
			case string:
				line[i] = v
			default:
				line[i] = fmt.Sprint(v)
			}
		}
		out = append(out, line)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("query %s: %w", path, err)
	}
	return duckWriteTable(w, out)
}

// duckOpenReadOnly opens path read-only, waiting up to duckLockWait while a
// writer holds it; waiting, if not nil, is called before each wait.
func duckOpenReadOnly(ctx context.Context, path string, waiting func()) (*sql.DB, error) {
	deadline := time.Now().Add(duckLockWait)
	for {
		c, err := duckdb.NewConnector(path+"?access_mode=READ_ONLY", nil)
		if err == nil {
			return sql.OpenDB(c), nil
		}
		var de *duckdb.Error
		locked := errors.As(err, &de) && de.Type == duckdb.ErrorTypeIO && strings.Contains(de.Msg, "Could not set lock")
		if !locked || time.Now().After(deadline) {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		if waiting != nil {
			waiting()
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// duckWriteTable writes rows (the first is the header) as columns separated
// by " | ", with a rule under the header and the row count at the end.
func duckWriteTable(w io.Writer, rows [][]string) error {
	esc := strings.NewReplacer("\n", `\n`, "\t", `\t`, "\r", `\r`)
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i := range r {
			r[i] = esc.Replace(r[i])
			widths[i] = max(widths[i], utf8.RuneCountInString(r[i]))
		}
	}
	var b strings.Builder
	line := func(r []string) {
		for i, v := range r {
			if i > 0 {
				b.WriteString(" | ")
			}
			b.WriteString(v)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(v)))
			}
		}
		b.WriteByte('\n')
	}
	line(rows[0])
	for i, n := range widths {
		if i > 0 {
			b.WriteString("-+-")
		}
		b.WriteString(strings.Repeat("-", n))
	}
	b.WriteByte('\n')
	for _, r := range rows[1:] {
		line(r)
	}
	if n := len(rows) - 1; n == 1 {
		b.WriteString("(1 row)\n")
	} else {
		fmt.Fprintf(&b, "(%d rows)\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
