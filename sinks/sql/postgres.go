package sqlsink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// Postgres writes to PostgreSQL: rows are copied (COPY) into a temporary
// staging table, then merged with INSERT … ON CONFLICT DO UPDATE guarded
// by _tideline_position, in one transaction per batch.
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
		if p, s, ok := precision(c.Type); ok && p <= 1000 {
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
	if _, err := p.ensure(ctx, tg, b.Table); err != nil {
		return p.fail(ctx, tg, err)
	}
	// Render every value first: a value the column cannot hold is that
	// row's fault, found before anything is written.
	staged := make([][]any, len(b.Rows))
	st := textStyle{zone: true}
	for i := range b.Rows {
		r := &b.Rows[i]
		vals := make([]any, 0, len(r.Values)+3)
		vals = append(vals, string(r.Key), string(r.Order), string(r.Op))
		for j, v := range r.Values {
			c := &b.Table.Columns[j]
			if absent(v) {
				if c.Key {
					return keyAbsent(i, tg.pg(), c.Name)
				}
				continue
			}
			s, null, err := textValue(v, c.Logical, st)
			if err != nil {
				return &apply.RowError{Index: i, Err: fmt.Errorf("column %s: %w", c.Name, err)}
			}
			if null {
				vals = append(vals, nil)
			} else {
				vals = append(vals, s)
			}
		}
		staged[i] = vals
	}

	groups := groupByPresence(b.Rows)
	if b.Truncate != nil || len(b.Rows) < parallelRows {
		return p.fail(ctx, tg, p.write(ctx, tg, b, groups, staged))
	}
	// A big batch is written by two transactions at once, on two
	// connections: the keys are distinct, so they cannot conflict, and
	// PostgreSQL then uses both cores. If one fails, the other may have
	// committed: the retry rewrites nothing it wrote (position guard).
	var halves [2][]group
	for _, g := range groups {
		var h [2]group
		for n, i := range g.rows {
			h[n%2].rows = append(h[n%2].rows, i)
		}
		for k := range halves {
			if len(h[k].rows) > 0 {
				h[k].present = g.present
				halves[k] = append(halves[k], h[k])
			}
		}
	}
	eg, gctx := errgroup.WithContext(ctx)
	for _, h := range halves {
		eg.Go(func() error { return p.write(gctx, tg, b, h, staged) })
	}
	return p.fail(ctx, tg, eg.Wait())
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

// parallelRows is the batch size from which two transactions share it.
const parallelRows = 2000

// write applies the rows of groups (and b's truncate) in one transaction.
func (p *Postgres) write(ctx context.Context, tg target, b *apply.TableBatch, groups []group, staged [][]any) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return classifyPG(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it is a no-op
	keep, err := p.unburied(ctx, tx, tg, b, groups)
	if err != nil {
		return err
	}
	if b.Truncate != nil {
		if err := p.truncate(ctx, tx, tg, b.Truncate); err != nil {
			return err
		}
	}
	// The staging tables this transaction filled: see applyGroup.
	used := map[int]bool{}
	for _, g := range groups {
		g, ok := g.only(keep)
		if !ok {
			continue
		}
		if err := p.applyGroup(ctx, tx, tg, b, g, staged, used); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return classifyPG(err)
	}
	return nil
}

// unburied returns which rows of groups are newer than their key's
// tombstone and the table's last truncate: older ones were deleted after
// they happened. Rows not in groups are never kept.
func (p *Postgres) unburied(ctx context.Context, tx pgx.Tx, tg target, b *apply.TableBatch, groups []group) ([]bool, error) {
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
	rows, err := tx.Query(ctx, fmt.Sprintf("SELECT key, position FROM %s WHERE table_name = $1 AND key = ANY($2)", tg.pgTombstones()), tg.name, keys)
	if err != nil {
		return nil, classifyPG(err)
	}
	defer rows.Close() // on a Scan error too: an open result holds its connection
	buried := map[string]string{}
	for rows.Next() {
		var k, pos string
		if err := rows.Scan(&k, &pos); err != nil {
			return nil, classifyPG(err)
		}
		buried[k] = pos
	}
	if err := rows.Err(); err != nil {
		return nil, classifyPG(err)
	}
	keep := filterBuried(b, buried)
	in := make([]bool, len(b.Rows))
	for _, g := range groups {
		for _, i := range g.rows {
			in[i] = keep[i]
		}
	}
	return in, nil
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
func (p *Postgres) applyGroup(ctx context.Context, tx pgx.Tx, tg target, b *apply.TableBatch, g group, staged [][]any, used map[int]bool) error {
	var tcols []change.Column
	for j, c := range b.Table.Columns {
		if g.present[j] {
			tcols = append(tcols, c)
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
	src := make([][]any, len(g.rows))
	for n, i := range g.rows {
		src[n] = staged[i]
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{stage}, cols, pgx.CopyFromRows(src)); err != nil {
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
	if !p.cfg.SoftDelete {
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
