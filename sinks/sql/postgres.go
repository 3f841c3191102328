package sqlsink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// Postgres writes to PostgreSQL, in one transaction per batch (two for a
// big batch): creates are copied (COPY) straight into the target table;
// the other rows are copied into a temporary staging table, then merged
// with INSERT … ON CONFLICT DO UPDATE guarded by _tideline_position.
type Postgres struct {
	cfg    Config
	pool   *pgxpool.Pool
	log    *zap.Logger
	tables map[target]*pgTable
}

var _ apply.Sink = (*Postgres)(nil)

// pgTable is what the sink knows of a target table: its columns and their
// types (information_schema's data_type).
type pgTable struct {
	cols map[string]string
	// pause counts down the batches still written without direct copies
	// (see directPause).
	pause int
}

// NewPostgres connects to cfg.DSN. The pool reconnects by itself, so a
// restarted server only costs retries.
func NewPostgres(ctx context.Context, cfg Config, log *zap.Logger) (*Postgres, error) {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("sink %s: dsn %s: %w", cfg.Name, config.Redact(cfg.DSN), err)
	}
	pc.MaxConns = 3 // two writers of a big batch, and DDL
	pc.ConnConfig.RuntimeParams["application_name"] = "tideline-sink-" + cfg.Name
	pc.ConnConfig.RuntimeParams["TimeZone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", cfg.Name, err)
	}
	if cfg.TableFormat == "" {
		cfg.TableFormat = DefaultTableFormat("postgres")
	}
	return &Postgres{cfg: cfg, pool: pool, log: log, tables: map[target]*pgTable{}}, nil
}

// Close implements apply.Sink.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

func pgIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func (t target) pg() string {
	if t.schema == "" {
		return pgIdent(t.name)
	}
	return pgIdent(t.schema) + "." + pgIdent(t.name)
}

func (t target) pgTombstones() string {
	if t.schema == "" {
		return pgIdent(tombstones)
	}
	return pgIdent(t.schema) + "." + pgIdent(tombstones)
}

// pgType maps a column to its PostgreSQL type (docs/sinks.md).
func pgType(c change.Column) string {
	switch c.Logical {
	case change.Int16:
		return "smallint"
	case change.Int32:
		return "integer"
	case change.Int64:
		return "bigint"
	case change.Uint64:
		return "numeric(20,0)"
	case change.Decimal:
		if p, s, ok := change.Precision(c.Type); ok && p <= 1000 {
			return fmt.Sprintf("numeric(%d,%d)", p, s)
		}
		return "numeric"
	case change.Float32:
		return "real"
	case change.Float64:
		return "double precision"
	case change.Bool:
		return "boolean"
	case change.Bytes:
		return "bytea"
	case change.JSON, change.Array:
		return "jsonb"
	case change.UUID:
		return "uuid"
	case change.Date:
		return "date"
	case change.Time:
		return "time(6)"
	case change.Timestamp:
		return "timestamp(6)"
	case change.TimestampTZ:
		return "timestamptz"
	case change.TimeTZ:
		return "timetz"
	case change.Interval:
		return "interval"
	}
	return "text"
}

// pgRank orders information_schema data types a column may be widened
// through; 0 means not widenable. Ranks widen only within their tens
// (integers and numeric, floats).
var pgRank = map[string]int{"smallint": 1, "integer": 2, "bigint": 3, "numeric": 4, "real": 11, "double precision": 12}

// pgDataType is information_schema's data_type of a type we create.
func pgDataType(typ string) string {
	if i := strings.IndexByte(typ, '('); i > 0 {
		typ = typ[:i]
	}
	switch typ {
	case "timestamp":
		return "timestamp without time zone"
	case "timestamptz":
		return "timestamp with time zone"
	case "time":
		return "time without time zone"
	case "timetz":
		return "time with time zone"
	}
	return typ
}

// pgValue is the SQL expression that turns staged text s.<col> into the
// column's type.
func pgValue(c change.Column, staged string) string {
	switch c.Logical {
	case change.Bytes:
		return "decode(" + staged + ", 'base64')"
	}
	return staged + "::" + pgType(c)
}

// ensure creates the target table, its tombstone table, and the columns it
// lacks; it widens columns whose source type grew.
func (p *Postgres) ensure(ctx context.Context, tg target, t *change.Table) (*pgTable, error) {
	pt := p.tables[tg]
	if pt != nil && pt.covers(t) {
		return pt, nil
	}
	if pt == nil {
		var b strings.Builder
		if tg.schema != "" {
			fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n", pgIdent(tg.schema))
		}
		fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s (", tg.pg())
		var keys []string
		for _, c := range t.Columns {
			fmt.Fprintf(&b, "%s %s, ", pgIdent(c.Name), pgType(c))
			if c.Key {
				keys = append(keys, pgIdent(c.Name))
			}
		}
		fmt.Fprintf(&b, `%s text COLLATE "C" NOT NULL, %s char(1) NOT NULL, %s timestamptz NOT NULL`, colPosition, colOp, colAppliedAt)
		if p.cfg.SoftDelete {
			fmt.Fprintf(&b, ", %s boolean NOT NULL DEFAULT false", colDeleted)
		}
		fmt.Fprintf(&b, ", PRIMARY KEY (%s));\n", strings.Join(keys, ", "))
		fmt.Fprintf(&b, `CREATE TABLE IF NOT EXISTS %s (table_name text NOT NULL, key text NOT NULL, position text COLLATE "C" NOT NULL, PRIMARY KEY (table_name, key))`, tg.pgTombstones())
		if _, err := p.pool.Exec(ctx, b.String()); err != nil {
			return nil, fmt.Errorf("create %s: %w", tg.pg(), classifyPG(err))
		}
	}
	cols, err := p.columns(ctx, tg)
	if err != nil {
		return nil, err
	}
	for _, c := range t.Columns {
		want := pgType(c)
		have, ok := cols[c.Name]
		switch {
		case !ok:
			if _, err := p.pool.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s", tg.pg(), pgIdent(c.Name), want)); err != nil {
				return nil, fmt.Errorf("add column %s to %s: %w", c.Name, tg.pg(), classifyPG(err))
			}
			p.log.Info("target column added", zap.String("table", tg.pg()), zap.String("column", c.Name), zap.String("type", want))
		case pgWidens(have, want):
			if _, err := p.pool.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE %s", tg.pg(), pgIdent(c.Name), want)); err != nil {
				return nil, fmt.Errorf("widen column %s of %s to %s: %w", c.Name, tg.pg(), want, classifyPG(err))
			}
			p.log.Info("target column widened", zap.String("table", tg.pg()), zap.String("column", c.Name), zap.String("from", have), zap.String("to", want))
		}
	}
	if cols, err = p.columns(ctx, tg); err != nil {
		return nil, err
	}
	pt = &pgTable{cols: cols}
	p.tables[tg] = pt
	return pt, nil
}

// pgWidens reports whether a column of data type have must be widened to
// type want.
func pgWidens(have, want string) bool {
	h, w := pgRank[have], pgRank[pgDataType(want)]
	return h > 0 && w > h && w/10 == h/10
}

// covers reports whether the target has every column of t with a type at
// least as wide.
func (pt *pgTable) covers(t *change.Table) bool {
	for _, c := range t.Columns {
		have, ok := pt.cols[c.Name]
		if !ok {
			return false
		}
		if pgWidens(have, pgType(c)) {
			return false
		}
	}
	return true
}

func (p *Postgres) columns(ctx context.Context, tg target) (map[string]string, error) {
	schema := tg.schema
	q := `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2`
	if schema == "" {
		q = `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $2 AND $1 = ''`
	}
	rows, err := p.pool.Query(ctx, q, schema, tg.name)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.pg(), classifyPG(err))
	}
	defer rows.Close() // on a Scan error too: an open result holds its connection
	cols := map[string]string{}
	for rows.Next() {
		var n, t string
		if err := rows.Scan(&n, &t); err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", tg.pg(), err)
		}
		cols[n] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.pg(), classifyPG(err))
	}
	return cols, nil
}

// Apply implements apply.Sink.
func (p *Postgres) Apply(ctx context.Context, b *apply.TableBatch) error {
	if !b.Table.HasKey {
		return apply.Reject(errNoKey)
	}
	tg, err := resolveTarget(p.cfg.TableFormat, b.Table)
	if err != nil {
		return apply.Reject(err)
	}
	pt, err := p.ensure(ctx, tg, b.Table)
	if err != nil {
		return p.fail(ctx, tg, err)
	}
	// Render every value first: a value the column cannot hold is that
	// row's fault, found before anything is written.
	r, err := renderPG(tg, b)
	if err != nil {
		return err
	}
	groups := groupByPresence(b.Rows)
	direct := pt.pause == 0
	if !direct {
		pt.pause--
	}
	if b.Truncate != nil || len(b.Rows) < parallelRows {
		taken, err := p.writeAll(ctx, tg, r, groups, direct)
		if taken {
			pt.pause = directPause
		}
		return p.fail(ctx, tg, err)
	}
	// A big batch is written by two transactions at once, on two
	// connections: the keys are distinct, so they cannot conflict, and
	// PostgreSQL then uses both cores. If one fails, the other may have
	// committed: the retry rewrites nothing it wrote (position guard).
	eg, gctx := errgroup.WithContext(ctx)
	var anyTaken atomic.Bool
	for _, h := range splitGroups(groups) {
		eg.Go(func() error {
			taken, err := p.writeAll(gctx, tg, r, h, direct)
			if taken {
				anyTaken.Store(true)
			}
			return err
		})
	}
	err = eg.Wait()
	if anyTaken.Load() {
		pt.pause = directPause
	}
	return p.fail(ctx, tg, err)
}

// fail returns err, the outcome of an Apply of tg. On a transient error it
// forgets what the sink knows of the table, so that the retry reads it
// again: someone may have dropped the table or one of its columns, and
// each retry would otherwise fail on it forever. It reports cancellation
// as ctx.Err(), as apply.Sink asks.
func (p *Postgres) fail(ctx context.Context, tg target, err error) error {
	if err == nil || apply.IsPermanent(err) {
		return err
	}
	delete(p.tables, tg)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// pgRendered is a batch's values rendered as COPY's text format (escaped),
// all in one buffer.
type pgRendered struct {
	rendered
	// noDirect marks a table with a bytea column: its values are staged
	// as base64 text and decoded by SQL, so its rows are never copied
	// into the target directly.
	noDirect bool
}

// renderPG renders the values of b. A value its column cannot hold, or a
// row without a key column, is returned as that row's RowError.
func renderPG(tg target, b *apply.TableBatch) (*pgRendered, error) {
	var scratch []byte
	rd, err := render(tg.pg(), b, textStyle{zone: true}, func(text []byte, off int) ([]byte, error) {
		text, scratch = escapeCopyTail(text, off, scratch)
		return text, nil
	})
	if err != nil {
		return nil, err
	}
	r := &pgRendered{rendered: rd}
	for _, c := range b.Table.Columns {
		if c.Logical == change.Bytes {
			r.noDirect = true
		}
	}
	return r, nil
}

// escapeCopyTail escapes b[off:] for COPY's text format: a backslash,
// tab, newline or carriage return is written as a backslash sequence. The
// tail is copied to scratch first (returned for reuse).
func escapeCopyTail(b []byte, off int, scratch []byte) ([]byte, []byte) {
	tail := b[off:]
	if !needsCopyEscape(tail) {
		return b, scratch
	}
	scratch = append(scratch[:0], tail...)
	return appendTabEscaped(b[:off], scratch), scratch
}

func needsCopyEscape(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c == '\t' || c == '\n' || c == '\r' {
			return true
		}
	}
	return false
}

// appendValue appends row i's value of column j, or \N for NULL.
func (r *pgRendered) appendValue(dst []byte, i, j int) []byte {
	v, ok := r.value(i, j)
	if !ok {
		return append(dst, '\\', 'N')
	}
	return append(dst, v...)
}

// errKeyTaken is returned when a row copied straight into the target
// found its key taken. Apply then writes the batch again through the
// staging table.
var errKeyTaken = errors.New("a key copied into the target exists")

// directPause is how many batches of a table are written through the
// staging table alone after a direct copy found a key taken: a replay
// (after a crash, or of a re-snapshot) brings creates of keys the target
// has, batch after batch, and each direct copy would fail first.
const directPause = 16

// writeAll writes groups, copying the creates (and snapshot reads) straight
// into the target (no staging, no merge) unless direct is false; if one of
// their keys has a target row, it writes them all again through the
// staging table, which merges with what it finds, and reports taken.
func (p *Postgres) writeAll(ctx context.Context, tg target, r *pgRendered, groups []group, direct bool) (taken bool, err error) {
	err = p.write(ctx, tg, r, groups, direct)
	if errors.Is(err, errKeyTaken) {
		taken = true
		err = p.write(ctx, tg, r, groups, false)
	}
	return taken, err
}

// write applies the rows of groups (and the batch's truncate) in one
// transaction. With direct, the creates (and snapshot reads) are copied
// straight into the target: a create's key has no target row unless the
// change is applied again (a replay), so there is nothing to merge and
// no position to compare (the tombstones were checked), and COPY inserts
// them as cheaply as a bulk load. If a key does have a row, the unique
// violation aborts the transaction (errKeyTaken) and nothing was written.
// The other rows are staged and merged.
func (p *Postgres) write(ctx context.Context, tg target, r *pgRendered, groups []group, direct bool) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return classifyPG(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it is a no-op
	b := r.b
	var fresh []bool
	if direct && b.Truncate == nil && !r.noDirect {
		fresh = make([]bool, len(b.Rows))
		n := 0
		for _, g := range groups {
			for _, i := range g.rows {
				if op := b.Rows[i].Op; op == change.OpCreate || op == change.OpRead {
					fresh[i] = true
					n++
				}
			}
		}
		if n == 0 {
			fresh = nil
		}
	}
	keep, now, err := p.unburied(ctx, tx, tg, b, groups, fresh != nil)
	if err != nil {
		return err
	}
	if b.Truncate != nil {
		if err := p.truncate(ctx, tx, tg, b.Truncate); err != nil {
			return err
		}
	}
	staged := keep
	if fresh != nil {
		staged = make([]bool, len(keep))
		for i := range keep {
			fresh[i] = fresh[i] && keep[i]
			staged[i] = keep[i] && !fresh[i]
		}
	}
	// The staging tables this transaction filled: see applyGroup.
	used := map[int]bool{}
	for _, g := range groups {
		g, ok := g.only(staged)
		if !ok {
			continue
		}
		if err := p.applyGroup(ctx, tx, tg, r, g, used); err != nil {
			return err
		}
	}
	if fresh != nil {
		for _, g := range groups {
			g, ok := g.only(fresh)
			if !ok {
				continue
			}
			if err := p.copyFresh(ctx, tx, tg, r, g, now); err != nil {
				return err
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return classifyPG(err)
	}
	return nil
}

// unburied returns which rows of groups are newer than their key's
// tombstone and the table's last truncate: older ones were deleted after
// they happened. Rows not in groups are never kept. With now, it also
// returns the transaction's now() as text, in the same round trip.
func (p *Postgres) unburied(ctx context.Context, tx pgx.Tx, tg target, b *apply.TableBatch, groups []group, now bool) ([]bool, string, error) {
	// A table without deletes has no tombstones: one probe, in the round
	// trip that reads now(), then saves sending and looking up every key.
	var some bool
	var ts string
	q := fmt.Sprintf("SELECT EXISTS (SELECT FROM %s WHERE table_name = $1)", tg.pgTombstones())
	if now {
		q = fmt.Sprintf("SELECT EXISTS (SELECT FROM %s WHERE table_name = $1), now()::text", tg.pgTombstones())
		if err := tx.QueryRow(ctx, q, tg.name).Scan(&some, &ts); err != nil {
			return nil, "", classifyPG(err)
		}
	} else if err := tx.QueryRow(ctx, q, tg.name).Scan(&some); err != nil {
		return nil, "", classifyPG(err)
	}
	var buried map[string]string
	if some {
		n := 1
		for _, g := range groups {
			n += len(g.rows)
		}
		keys := make([]string, 0, n)
		for _, g := range groups {
			for _, i := range g.rows {
				keys = append(keys, string(b.Rows[i].Key))
			}
		}
		keys = append(keys, truncateKey)
		// PostgreSQL sorts the array before it probes the index. Sorted
		// bytewise here, it only checks the order where the key column's
		// collation is C or C.UTF-8; under another one it sorts as before.
		slices.Sort(keys)
		rows, err := tx.Query(ctx, fmt.Sprintf("SELECT key, position FROM %s WHERE table_name = $1 AND key = ANY($2)", tg.pgTombstones()), tg.name, keys)
		if err != nil {
			return nil, "", classifyPG(err)
		}
		buried = map[string]string{}
		var k, pos string
		_, err = pgx.ForEachRow(rows, []any{&k, &pos}, func() error {
			buried[k] = pos
			return nil
		})
		if err != nil {
			return nil, "", classifyPG(err)
		}
	}
	keep := filterBuried(b, buried)
	in := make([]bool, len(b.Rows))
	for _, g := range groups {
		for _, i := range g.rows {
			in[i] = keep[i]
		}
	}
	return in, ts, nil
}

// copyFresh copies the rows of g into the target. A unique violation
// means one of their keys has a row already: errKeyTaken.
func (p *Postgres) copyFresh(ctx context.Context, tx pgx.Tx, tg target, r *pgRendered, g group, now string) error {
	var names []string
	var cols []int
	for j, c := range r.b.Table.Columns {
		if g.present[j] {
			names = append(names, pgIdent(c.Name))
			cols = append(cols, j)
		}
	}
	names = append(names, colPosition, colOp, colAppliedAt)
	tail := "\t" + now
	if p.cfg.SoftDelete {
		names = append(names, colDeleted)
		tail += "\tf"
	}
	tail += "\n"
	data := make([]byte, 0, r.size(g)+len(g.rows)*(len(tail)+40))
	for _, i := range g.rows {
		row := &r.b.Rows[i]
		for _, j := range cols {
			data = r.appendValue(data, i, j)
			data = append(data, '\t')
		}
		data = appendTabEscaped(data, row.Order)
		data = append(data, '\t', byte(row.Op))
		data = append(data, tail...)
	}
	q := fmt.Sprintf("COPY %s (%s) FROM STDIN", tg.pg(), strings.Join(names, ", "))
	if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data), q); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return fmt.Errorf("%w: %v", errKeyTaken, err)
		}
		return classifyPG(err)
	}
	return nil
}

// size is the rendered size of the values of g's rows.
func (r *pgRendered) size(g group) int {
	n := 0
	ncol := len(r.b.Table.Columns)
	for _, i := range g.rows {
		for j := range ncol {
			if v := r.vals[i*ncol+j]; v.end >= 0 {
				n += v.end - v.off
			}
		}
	}
	return n + len(g.rows)*ncol
}

// filterBuried keeps the rows newer than their key's tombstone and the
// truncate tombstone.
func filterBuried(b *apply.TableBatch, buried map[string]string) []bool {
	keep := make([]bool, len(b.Rows))
	trunc, hasTrunc := buried[truncateKey]
	for i := range b.Rows {
		r := &b.Rows[i]
		keep[i] = true
		if pos, ok := buried[string(r.Key)]; ok && !newer(r.Order, []byte(pos)) {
			keep[i] = false
		}
		if hasTrunc && !newer(r.Order, []byte(trunc)) {
			keep[i] = false
		}
	}
	return keep
}

func (p *Postgres) truncate(ctx context.Context, tx pgx.Tx, tg target, order []byte) error {
	q := fmt.Sprintf("DELETE FROM %s WHERE %s < $1", tg.pg(), colPosition)
	if p.cfg.SoftDelete {
		q = fmt.Sprintf("UPDATE %s SET %s = true, %s = 't', %s = $1, %s = now() WHERE %s < $1",
			tg.pg(), colDeleted, colOp, colPosition, colAppliedAt, colPosition)
	}
	if _, err := tx.Exec(ctx, q, string(order)); err != nil {
		return classifyPG(err)
	}
	_, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s (table_name, key, position) VALUES ($1, $2, $3)
		ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position WHERE %[1]s.position < EXCLUDED.position`, tg.pgTombstones()),
		tg.name, truncateKey, string(order))
	return classifyPG(err)
}

// applyGroup stages the rows of g and merges them: deletes, then upserts.
//
// Staging tables are temporary, one per width, per session, emptied at
// each commit: no catalog churn per batch. Two groups of one transaction
// may have the same width (but carry different columns), so a table used
// reads the rows of an earlier group too: used holds the widths this
// transaction filled, and a reused table is emptied first.
func (p *Postgres) applyGroup(ctx context.Context, tx pgx.Tx, tg target, r *pgRendered, g group, used map[int]bool) error {
	b := r.b
	var tcols []change.Column
	var tidx []int
	for j, c := range b.Table.Columns {
		if g.present[j] {
			tcols = append(tcols, c)
			tidx = append(tidx, j)
		}
	}
	stage := fmt.Sprintf("_tl_stage_%d", len(tcols))
	cols := []string{"_k", "_pos", "_op"}
	for n := range tcols {
		cols = append(cols, fmt.Sprintf("c%d", n))
	}
	if used[len(tcols)] {
		if _, err := tx.Exec(ctx, "TRUNCATE "+stage); err != nil {
			return classifyPG(err)
		}
	} else {
		var ddl strings.Builder
		fmt.Fprintf(&ddl, "CREATE TEMP TABLE IF NOT EXISTS %s (", stage)
		for i, c := range cols {
			if i > 0 {
				ddl.WriteString(", ")
			}
			fmt.Fprintf(&ddl, "%s text", c)
		}
		ddl.WriteString(") ON COMMIT DELETE ROWS")
		if _, err := tx.Exec(ctx, ddl.String()); err != nil {
			return classifyPG(err)
		}
		used[len(tcols)] = true
	}
	dels, ups := 0, 0
	data := make([]byte, 0, r.size(g)+len(g.rows)*64)
	for _, i := range g.rows {
		row := &b.Rows[i]
		if row.Op == change.OpDelete {
			dels++
		} else {
			ups++
		}
		data = appendTabEscaped(data, row.Key)
		data = append(data, '\t')
		data = appendTabEscaped(data, row.Order)
		data = append(data, '\t', byte(row.Op))
		for _, j := range tidx {
			data = append(data, '\t')
			data = r.appendValue(data, i, j)
		}
		data = append(data, '\n')
	}
	q := fmt.Sprintf("COPY %s (%s) FROM STDIN", stage, strings.Join(cols, ", "))
	if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data), q); err != nil {
		return classifyPG(err)
	}

	var keyMatch []string
	for n, c := range tcols {
		if c.Key {
			keyMatch = append(keyMatch, fmt.Sprintf("t.%s = %s", pgIdent(c.Name), pgValue(c, "s."+cols[n+3])))
		}
	}
	if len(keyMatch) < len(keyColumns(b.Table)) {
		// Apply rejects the rows that lack a key column before writing.
		return apply.Permanent(fmt.Errorf("changes of %s lack key columns", tg.pg()))
	}
	if !p.cfg.SoftDelete && dels > 0 {
		del := fmt.Sprintf("DELETE FROM %s t USING %s s WHERE s._op = 'd' AND %s AND t.%s < s._pos",
			tg.pg(), stage, strings.Join(keyMatch, " AND "), colPosition)
		if _, err := tx.Exec(ctx, del); err != nil {
			return classifyPG(err)
		}
		tomb := fmt.Sprintf(`INSERT INTO %[1]s AS x (table_name, key, position) SELECT $1, s._k, s._pos FROM %[2]s s WHERE s._op = 'd'
			ON CONFLICT (table_name, key) DO UPDATE SET position = EXCLUDED.position WHERE x.position < EXCLUDED.position`, tg.pgTombstones(), stage)
		if _, err := tx.Exec(ctx, tomb, tg.name); err != nil {
			return classifyPG(err)
		}
	}
	if ups == 0 && !p.cfg.SoftDelete {
		return nil
	}

	var names, values, sets, keys []string
	for n, c := range tcols {
		names = append(names, pgIdent(c.Name))
		values = append(values, pgValue(c, "s."+cols[n+3]))
		if c.Key {
			keys = append(keys, pgIdent(c.Name))
		} else {
			sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", pgIdent(c.Name)))
		}
	}
	names = append(names, colPosition, colOp, colAppliedAt)
	values = append(values, "s._pos", "s._op", "now()")
	for _, m := range []string{colPosition, colOp, colAppliedAt} {
		sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", m))
	}
	where := "s._op <> 'd'"
	if p.cfg.SoftDelete {
		names = append(names, colDeleted)
		values = append(values, "s._op = 'd'")
		sets = append(sets, fmt.Sprintf("%[1]s = EXCLUDED.%[1]s", colDeleted))
		where = "true"
	}
	up := fmt.Sprintf(`INSERT INTO %s AS t (%s) SELECT %s FROM %s s WHERE %s
		ON CONFLICT (%s) DO UPDATE SET %s WHERE t.%s < EXCLUDED.%s`,
		tg.pg(), strings.Join(names, ", "), strings.Join(values, ", "), stage, where,
		strings.Join(keys, ", "), strings.Join(sets, ", "), colPosition, colPosition)
	if _, err := tx.Exec(ctx, up); err != nil {
		return classifyPG(err)
	}
	return nil
}

// classifyPG marks errors about the data (SQLSTATE classes 22 and 23, a
// datatype mismatch, a row too large) permanent; everything else
// (connections, deadlocks, a server shutting down) is transient.
func classifyPG(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "22"), strings.HasPrefix(pe.Code, "23"),
			pe.Code == "42804", pe.Code == "54000":
			return apply.Permanent(err)
		}
	}
	return err
}
