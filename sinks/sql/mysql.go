package sqlsink

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// MySQL writes to MySQL 8 or MariaDB, in one transaction per batch (two
// for a big batch): creates are loaded (LOAD DATA LOCAL INFILE, from
// memory) straight into the target table; the other rows are written by
// multi-row INSERT … ON DUPLICATE KEY UPDATE guarded by
// _tideline_position.
type MySQL struct {
	cfg    Config
	db     *sql.DB
	dbName string // the DSN's database: tables go there unless the format names one
	log    *zap.Logger
	// keyColl is the binary collation of string key columns, found on
	// first use.
	keyColl string
	tables  map[target]*myTable
	// noLoad is set once the server refused LOAD DATA LOCAL INFILE
	// (local_infile is off): creates are then inserted like the rest.
	noLoad atomic.Bool
	// warned holds the tables whose load warnings were logged (kept when
	// a failed batch makes the sink forget the table).
	warned map[target]bool
}

var _ apply.Sink = (*MySQL)(nil)

// myTable is what the sink knows of a target table: its columns (lower
// case, as MySQL compares them) and their information_schema DATA_TYPE.
type myTable struct {
	cols map[string]string
	// pause counts down the batches still written without direct loads
	// (see directPause).
	pause int
}

// Statement limits. A statement stays far below max_allowed_packet
// (MariaDB's default is 16 MiB) and below the 65535 placeholders a
// server-side prepared statement allows, which the driver falls back to
// when an interpolated statement would exceed max_allowed_packet.
const (
	myMaxRows   = 1000
	myMaxBytes  = 4 << 20
	myMaxParams = 60000
)

// mySQLMode makes bad values fail the statement (and so the batch, as a
// permanent error) instead of being truncated with a warning.
const mySQLMode = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"

// NewMySQL prepares a connection pool to cfg.DSN
// (mysql://user:pass@host:port/db?tls=true). It does not connect: like the
// PostgreSQL sink it starts with the target down and retries later.
func NewMySQL(ctx context.Context, cfg Config, log *zap.Logger) (*MySQL, error) {
	if cfg.TableFormat == "" {
		cfg.TableFormat = DefaultTableFormat("mysql")
	}
	dc, err := mysqlConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("sink %s: dsn %s: %w", cfg.Name, config.Redact(cfg.DSN), err)
	}
	if dc.DBName == "" && !strings.Contains(cfg.TableFormat, ".") {
		return nil, fmt.Errorf("sink %s: dsn %s names no database and table_format %q no schema: name one of them",
			cfg.Name, config.Redact(cfg.DSN), cfg.TableFormat)
	}
	dc.Logger = zap.NewStdLog(log.Named("mysql-driver"))
	conn, err := mysql.NewConnector(dc)
	if err != nil {
		return nil, fmt.Errorf("sink %s: dsn %s: %w", cfg.Name, config.Redact(cfg.DSN), err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(2)
	// Servers close idle connections after wait_timeout; retire ours first
	// so a quiet sink does not meet a dead connection on its next batch.
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &MySQL{cfg: cfg, db: db, dbName: dc.DBName, log: log, tables: map[target]*myTable{}, warned: map[target]bool{}}, nil
}

// mysqlConfig turns mysql://user:pass@host:port/db?tls=… into the driver's
// configuration.
func mysqlConfig(dsn string) (*mysql.Config, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme != "mysql" || u.Hostname() == "" {
		return nil, errors.New("want mysql://user:pass@host:port/db")
	}
	c := mysql.NewConfig()
	c.User = u.User.Username()
	c.Passwd, _ = u.User.Password()
	port := u.Port()
	if port == "" {
		port = "3306"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("bad port %q", port)
	}
	c.Net = "tcp"
	c.Addr = net.JoinHostPort(u.Hostname(), port)
	c.DBName = strings.Trim(u.Path, "/")
	if c.TLS, err = config.MySQLTLS(u.Query(), u.Hostname()); err != nil {
		return nil, err
	}
	// Values are interpolated client-side: one round trip per statement
	// instead of prepare, execute and close.
	c.InterpolateParams = true
	c.ParseTime = false
	c.Loc = time.UTC
	c.MaxAllowedPacket = 0 // read the server's
	c.Timeout = 10 * time.Second
	c.Collation = "utf8mb4_general_ci" // known to MySQL and MariaDB, safe to interpolate in
	c.Params = map[string]string{"time_zone": "'+00:00'", "sql_mode": mySQLMode}
	if err := c.Apply(mysql.Charset("utf8mb4", "")); err != nil {
		return nil, err
	}
	return c, nil
}

// Close implements apply.Sink.
func (m *MySQL) Close() error { return m.db.Close() }

func myIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// my is the qualified name of a target whose schema is set.
func (t target) my() string { return myIdent(t.schema) + "." + myIdent(t.name) }

func (t target) myTombstones() string { return myIdent(t.schema) + "." + myIdent(tombstones) }

// myType maps a column to its MySQL type (docs/sinks.md).
func myType(c change.Column) string {
	switch c.Logical {
	case change.Int16:
		return "SMALLINT"
	case change.Int32:
		return "INT"
	case change.Int64:
		return "BIGINT"
	case change.Uint64:
		return "BIGINT UNSIGNED"
	case change.Decimal:
		if p, s, ok := change.Precision(c.Type); ok && p <= 65 && s <= 30 && s <= p {
			return fmt.Sprintf("DECIMAL(%d,%d)", p, s)
		}
		return "DECIMAL(65,30)"
	case change.Float32:
		return "FLOAT"
	case change.Float64:
		return "DOUBLE"
	case change.Bool:
		return "BOOLEAN"
	case change.Bytes:
		return "LONGBLOB"
	case change.JSON, change.Array:
		return "JSON"
	case change.UUID:
		return "CHAR(36)"
	case change.Date:
		return "DATE"
	case change.Time:
		return "TIME(6)"
	case change.Timestamp, change.TimestampTZ:
		return "DATETIME(6)"
	case change.TimeTZ:
		return "VARCHAR(32)"
	case change.Interval:
		return "VARCHAR(64)"
	}
	return "LONGTEXT"
}

// myKeyType is the type of a key column: BLOB, TEXT and JSON cannot be a
// primary key, and text keys take a binary collation so that keys the
// source tells apart ("a", "A", "a ") stay apart.
func myKeyType(c change.Column, coll string) string {
	switch c.Logical {
	case change.Bytes:
		return "VARBINARY(255)"
	case change.String, change.JSON, change.Array:
		n := length(c.Type)
		if c.Logical != change.String || n <= 0 || n > 768 { // 768 utf8mb4 characters fill InnoDB's 3072-byte key
			n = 255
		}
		return fmt.Sprintf("VARCHAR(%d) CHARACTER SET utf8mb4 COLLATE %s", n, coll)
	case change.UUID, change.TimeTZ, change.Interval:
		return myType(c) + " CHARACTER SET utf8mb4 COLLATE " + coll
	}
	return myType(c)
}

// myColumnType is a column's full type for CREATE, ADD and MODIFY.
func (m *MySQL) myColumnType(c change.Column) string {
	if c.Key {
		return myKeyType(c, m.keyColl) + " NOT NULL"
	}
	return myType(c)
}

// myRank orders DATA_TYPEs a column may be widened through; 0 means not
// widenable. Ranks widen only within their tens (integers, floats).
var myRank = map[string]int{"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "bigint": 5, "float": 11, "double": 12}

// myDataType is information_schema's DATA_TYPE of a type we create.
func myDataType(typ string) string {
	if i := strings.IndexAny(typ, "( "); i > 0 {
		typ = typ[:i]
	}
	return strings.ToLower(typ)
}

// myWidens reports whether a column of DATA_TYPE have must be widened to hold
// the values of c.
func myWidens(have string, c change.Column) bool {
	r, h := myRank[myDataType(myType(c))], myRank[have]
	return h > 0 && r > h && r/10 == h/10
}

// keyCollation picks a binary NO PAD collation (MySQL 8, MariaDB 10.2+), so
// trailing spaces count too; older servers only have utf8mb4_bin.
func (m *MySQL) keyCollation(ctx context.Context) (string, error) {
	rows, err := m.db.QueryContext(ctx, `SELECT COLLATION_NAME FROM information_schema.COLLATIONS
		WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')`)
	if err != nil {
		return "", fmt.Errorf("read the server's collations: %w", classifyMy(err))
	}
	defer rows.Close()
	coll := "utf8mb4_bin"
	for rows.Next() {
		if err := rows.Scan(&coll); err != nil {
			return "", err
		}
	}
	return coll, rows.Err()
}

// ensure creates the target table, its tombstone table, and the columns it
// lacks; it widens columns whose source type grew. DDL commits implicitly
// in MySQL, so it runs before the batch's transaction.
func (m *MySQL) ensure(ctx context.Context, tg target, t *change.Table) (*myTable, error) {
	mt := m.tables[tg]
	if mt != nil && mt.covers(t, m.cfg.SoftDelete) {
		return mt, nil
	}
	if m.keyColl == "" {
		coll, err := m.keyCollation(ctx)
		if err != nil {
			return nil, err
		}
		m.keyColl = coll
	}
	if mt == nil {
		var stmts []string
		if tg.schema != m.dbName {
			stmts = append(stmts, fmt.Sprintf("CREATE DATABASE IF NOT EXISTS %s DEFAULT CHARACTER SET utf8mb4", myIdent(tg.schema)))
		}
		var b strings.Builder
		fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s (", tg.my())
		var keys []string
		for _, c := range t.Columns {
			fmt.Fprintf(&b, "%s %s, ", myIdent(c.Name), m.myColumnType(c))
			if c.Key {
				keys = append(keys, myIdent(c.Name))
			}
		}
		fmt.Fprintf(&b, "%s VARCHAR(40) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, %s CHAR(1) NOT NULL, %s DATETIME(6) NOT NULL",
			colPosition, colOp, colAppliedAt)
		if m.cfg.SoftDelete {
			fmt.Fprintf(&b, ", %s BOOLEAN NOT NULL DEFAULT FALSE", colDeleted)
		}
		fmt.Fprintf(&b, ", PRIMARY KEY (%s)) DEFAULT CHARSET=utf8mb4", strings.Join(keys, ", "))
		stmts = append(stmts, b.String(),
			// table_name holds a MySQL table name (at most 64 characters,
			// 256 bytes): with the key that fills InnoDB's 3072-byte index.
			fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (table_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, "+
				"`key` VARBINARY(2816) NOT NULL, position VARCHAR(40) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, "+
				"PRIMARY KEY (table_name, `key`)) DEFAULT CHARSET=utf8mb4", tg.myTombstones()))
		for _, s := range stmts {
			if _, err := m.db.ExecContext(ctx, s); err != nil {
				return nil, ddlError(fmt.Errorf("create %s: %w", tg.my(), err))
			}
		}
	}
	cols, err := m.columns(ctx, tg)
	if err != nil {
		return nil, err
	}
	var alter []string
	var logs []func()
	for _, c := range t.Columns {
		have, ok := cols[strings.ToLower(c.Name)]
		switch {
		case !ok:
			alter = append(alter, fmt.Sprintf("ADD COLUMN %s %s", myIdent(c.Name), m.myColumnType(c)))
			logs = append(logs, func() {
				m.log.Info("target column added", zap.String("table", tg.my()), zap.String("column", c.Name), zap.String("type", myType(c)))
			})
		case myWidens(have, c):
			alter = append(alter, fmt.Sprintf("MODIFY COLUMN %s %s", myIdent(c.Name), m.myColumnType(c)))
			logs = append(logs, func() {
				m.log.Info("target column widened", zap.String("table", tg.my()), zap.String("column", c.Name), zap.String("from", have), zap.String("to", myType(c)))
			})
		}
	}
	if _, ok := cols[colDeleted]; m.cfg.SoftDelete && !ok {
		// A table first written without soft_delete.
		alter = append(alter, fmt.Sprintf("ADD COLUMN %s BOOLEAN NOT NULL DEFAULT FALSE", colDeleted))
	}
	if len(alter) > 0 {
		// One ALTER: MySQL rebuilds the table once for all its changes.
		if _, err := m.db.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s %s", tg.my(), strings.Join(alter, ", "))); err != nil {
			return nil, ddlError(fmt.Errorf("alter %s (%s): %w", tg.my(), strings.Join(alter, ", "), err))
		}
		for _, l := range logs {
			l()
		}
		if cols, err = m.columns(ctx, tg); err != nil {
			return nil, err
		}
	}
	mt = &myTable{cols: cols}
	m.tables[tg] = mt
	return mt, nil
}

// ddlError rejects the batch when the server refuses a table or column for
// what it is (a key too long, a row too wide): retrying cannot help.
func ddlError(err error) error {
	if apply.IsPermanent(classifyMy(err)) {
		return apply.Reject(err)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1071, 1074, 1118, 1170, 1059, 1166, 1103: // key/column too long, row too large, bad names
			return apply.Reject(err)
		}
	}
	return classifyMy(err)
}

// covers reports whether the target has every column of t with a type at
// least as wide.
func (mt *myTable) covers(t *change.Table, soft bool) bool {
	for _, c := range t.Columns {
		have, ok := mt.cols[strings.ToLower(c.Name)]
		if !ok || myWidens(have, c) {
			return false
		}
	}
	_, ok := mt.cols[colDeleted]
	return ok || !soft
}

func (m *MySQL) columns(ctx context.Context, tg target) (map[string]string, error) {
	rows, err := m.db.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, tg.schema, tg.name)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.my(), classifyMy(err))
	}
	defer rows.Close()
	cols := map[string]string{}
	for rows.Next() {
		var n, t string
		if err := rows.Scan(&n, &t); err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", tg.my(), err)
		}
		cols[strings.ToLower(n)] = strings.ToLower(t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", tg.my(), classifyMy(err))
	}
	return cols, nil
}

// myRow is a row's present values, converted for the driver, aligned with
// the columns its group carries.
type myRow struct {
	vals []any
	size int // bytes the values add to a statement, roughly
}

// Apply implements apply.Sink.
func (m *MySQL) Apply(ctx context.Context, b *apply.TableBatch) error {
	if !b.Table.HasKey {
		return apply.Reject(errNoKey)
	}
	tg, err := resolveTarget(m.cfg.TableFormat, b.Table)
	if err != nil {
		return apply.Reject(err)
	}
	if tg.schema == "" {
		tg.schema = m.dbName
	}
	mt, err := m.ensure(ctx, tg, b.Table)
	if err != nil {
		return m.fail(ctx, tg, err)
	}
	// Convert every value first: a value the column cannot hold is that
	// row's fault, found before anything is written.
	rows := make([]myRow, len(b.Rows))
	for i := range b.Rows {
		r := &b.Rows[i]
		mr := myRow{vals: make([]any, 0, len(r.Values)), size: len(r.Order) + 16}
		for j, raw := range r.Values {
			c := &b.Table.Columns[j]
			if absent(raw) {
				if c.Key {
					return keyAbsent(i, tg.my(), c.Name)
				}
				continue
			}
			v, err := myValue(raw, c.Logical)
			if err != nil {
				return &apply.RowError{Index: i, Err: fmt.Errorf("%s column %s: %w", tg.my(), c.Name, err)}
			}
			switch v := v.(type) {
			case string:
				mr.size += len(v) + 4
			case []byte:
				mr.size += 2*len(v) + 10 // escaped in the worst case
			default:
				mr.size += 24
			}
			mr.vals = append(mr.vals, v)
		}
		rows[i] = mr
	}

	groups := groupByPresence(b.Rows)
	direct := mt.pause == 0
	if !direct {
		mt.pause--
	}
	if b.Truncate != nil || len(b.Rows) < parallelRows {
		cause, err := m.writeAll(ctx, tg, b, groups, rows, direct)
		m.fellBack(mt, tg, cause)
		if err != nil {
			return m.fail(ctx, tg, err)
		}
		return nil
	}
	// A big batch is written by two transactions at once, on the pool's
	// two connections, as the PostgreSQL sink does: the keys are
	// distinct, so the halves touch different rows, and the server then
	// uses two cores. (A deadlock between them on index gaps is a
	// transient error: the batch is retried.) If one fails, the other may
	// have committed: the retry rewrites nothing it wrote (position
	// guard).
	eg, gctx := errgroup.WithContext(ctx)
	var causes [2]error // each half's, read after Wait
	for k, h := range splitGroups(groups) {
		eg.Go(func() error {
			var err error
			causes[k], err = m.writeAll(gctx, tg, b, h, rows, direct)
			return err
		})
	}
	err = eg.Wait()
	m.fellBack(mt, tg, cmp.Or(causes[0], causes[1]))
	if err != nil {
		return m.fail(ctx, tg, err)
	}
	return nil
}

// fail forgets what the sink knows of the table, so that the retry reads
// it again (someone may have altered or dropped it), and reports
// cancellation as ctx.Err(), as apply.Sink asks.
func (m *MySQL) fail(ctx context.Context, tg target, err error) error {
	delete(m.tables, tg)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// writeAll writes groups, loading the creates (and snapshot reads)
// straight into the target with LOAD DATA unless direct is false or the
// server refuses it; if one of their keys has a target row, or the load
// warned, it writes them all again with INSERT … ON DUPLICATE KEY UPDATE,
// and returns why as cause (errKeyTaken or errLoadWarned).
func (m *MySQL) writeAll(ctx context.Context, tg target, b *apply.TableBatch, groups []group, rows []myRow, direct bool) (cause, err error) {
	err = m.write(ctx, tg, b, groups, rows, direct && !m.noLoad.Load())
	switch {
	case errors.Is(err, errKeyTaken), errors.Is(err, errLoadWarned):
		cause = err
	case errors.Is(err, errLoadRefused):
		if !m.noLoad.Swap(true) {
			m.log.Warn("the target refuses LOAD DATA LOCAL INFILE: creates are written by INSERT … ON DUPLICATE KEY UPDATE until the sink restarts; set local_infile=ON on the server for faster loads",
				zap.String("table", tg.my()), zap.Error(err))
		}
	default:
		return nil, err
	}
	return cause, m.write(ctx, tg, b, groups, rows, false)
}

// fellBack notes that a direct load of mt fell back to INSERT (cause, nil
// if none did): the table's next batches skip the load (directPause),
// and the first warning a load of the table raised is logged.
func (m *MySQL) fellBack(mt *myTable, tg target, cause error) {
	if cause == nil {
		return
	}
	mt.pause = directPause
	if errors.Is(cause, errLoadWarned) && !m.warned[tg] {
		m.warned[tg] = true
		m.log.Info("LOAD DATA raised warnings: the batch was written by INSERT … ON DUPLICATE KEY UPDATE, as are the table's next batches for a while",
			zap.String("table", tg.my()), zap.Int("batches", directPause), zap.Error(cause))
	}
}

// write applies the rows of groups (and the batch's truncate) in one
// transaction. With direct, the creates (and snapshot reads) are loaded
// straight into the target (see loadFresh): a create's key has no target
// row unless the change is applied again (a replay), so there is nothing
// to merge and no position to compare (the tombstones were checked).
func (m *MySQL) write(ctx context.Context, tg target, b *apply.TableBatch, groups []group, rows []myRow, direct bool) error {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin on %s: %w", tg.my(), classifyMy(err))
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	keep, err := m.unburied(ctx, tx, tg, b, groups)
	if err != nil {
		return err
	}
	if b.Truncate != nil {
		direct = false
		if err := m.truncate(ctx, tx, tg, b.Truncate); err != nil {
			return err
		}
	}
	fresh := make([]bool, len(b.Rows))
	if direct {
		for i := range b.Rows {
			if op := b.Rows[i].Op; keep[i] && (op == change.OpCreate || op == change.OpRead) {
				fresh[i], keep[i] = true, false
			}
		}
	}
	for _, g := range groups {
		if g, ok := g.only(keep); ok {
			if err := m.applyGroup(ctx, tx, tg, b, g, rows); err != nil {
				return err
			}
		}
		if g, ok := g.only(fresh); ok {
			if err := m.loadFresh(ctx, tx, tg, b, g, rows); err != nil {
				return err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit to %s: %w", tg.my(), classifyMy(err))
	}
	return nil
}

// errLoadWarned is returned when a direct load raised warnings: under
// IGNORE, which LOAD DATA LOCAL implies, strict mode's errors (a value
// the column cannot hold) become warnings and the values are coerced. The
// batch is written again with INSERT, which reports them as errors.
var errLoadWarned = errors.New("LOAD DATA raised warnings")

// errLoadRefused is returned when the server refuses LOAD DATA LOCAL
// INFILE (local_infile off): MySQL 8's 3948, MariaDB's 4166, or 1148.
var errLoadRefused = errors.New("the server refuses LOAD DATA LOCAL INFILE")

// loadSeq names the readers of concurrent loads.
var loadSeq atomic.Uint64

// loadFresh loads the rows of g into the target with LOAD DATA LOCAL
// INFILE from memory, the server's bulk path. Rows whose key is taken are
// skipped by the load (IGNORE): fewer rows loaded than sent means a key
// had a row (errKeyTaken), and any warning means a value was coerced
// (errLoadWarned). Either way the transaction is rolled back and the rows
// are written again by upsert.
func (m *MySQL) loadFresh(ctx context.Context, tx *sql.Tx, tg target, b *apply.TableBatch, g group, rows []myRow) error {
	var names, set []string
	for j, c := range b.Table.Columns {
		if !g.present[j] {
			continue
		}
		if c.Logical == change.Bytes {
			v := fmt.Sprintf("@b%d", len(names))
			names = append(names, v)
			set = append(set, fmt.Sprintf("%s = UNHEX(%s)", myIdent(c.Name), v))
		} else {
			names = append(names, myIdent(c.Name))
		}
	}
	names = append(names, colOp, colPosition)
	set = append(set, colAppliedAt+" = UTC_TIMESTAMP(6)")
	if m.cfg.SoftDelete {
		set = append(set, colDeleted+" = FALSE")
	}
	size := 0
	for _, i := range g.rows {
		size += rows[i].size + len(b.Rows[i].Order) + 4
	}
	data := make([]byte, 0, size)
	for _, i := range g.rows {
		for _, v := range rows[i].vals {
			data = appendLoadValue(data, v)
			data = append(data, '\t')
		}
		r := &b.Rows[i]
		data = append(data, byte(r.Op), '\t')
		data = appendTabEscaped(data, r.Order)
		data = append(data, '\n')
	}
	name := "tideline-" + strconv.FormatUint(loadSeq.Add(1), 10)
	mysql.RegisterReaderHandler(name, func() io.Reader { return bytes.NewReader(data) })
	defer mysql.DeregisterReaderHandler(name)
	q := fmt.Sprintf("LOAD DATA LOCAL INFILE 'Reader::%s' IGNORE INTO TABLE %s CHARACTER SET utf8mb4 "+
		"FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (%s) SET %s",
		name, tg.my(), strings.Join(names, ", "), strings.Join(set, ", "))
	res, err := tx.ExecContext(ctx, q)
	if err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 3948 || me.Number == 4166 || me.Number == 1148) {
			return fmt.Errorf("%w: %v", errLoadRefused, err)
		}
		return fmt.Errorf("load into %s: %w", tg.my(), classifyMy(err))
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(g.rows)) {
		return fmt.Errorf("%w: %d of %d rows loaded into %s", errKeyTaken, n, len(g.rows), tg.my())
	}
	// The load's first warning, if it raised any (for the log).
	var level, msg string
	var code int
	switch err := tx.QueryRowContext(ctx, "SHOW WARNINGS LIMIT 1").Scan(&level, &code, &msg); {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("load into %s: %w", tg.my(), classifyMy(err))
	}
	return fmt.Errorf("%w: loading into %s, the first: %s %d %s", errLoadWarned, tg.my(), level, code, msg)
}

// appendLoadValue appends a driver value (see myValue) as a LOAD DATA
// field: \N for NULL, bytes (only a bytes column has them) in hex, which
// the statement unhexes.
func appendLoadValue(dst []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, '\\', 'N')
	case int64:
		return strconv.AppendInt(dst, v, 10)
	case uint64:
		return strconv.AppendUint(dst, v, 10)
	case string:
		return appendTabEscaped(dst, v)
	case []byte:
		return hex.AppendEncode(dst, v)
	}
	panic(fmt.Sprintf("appendLoadValue: %T", v))
}

// myValue converts a JSON value of a column with logical type l to what
// the driver sends: integers as numbers (MySQL may compare an integer
// column with a string as doubles, which lose digits), bytes decoded,
// booleans as 1/0, the rest as the text textValue gives.
func myValue(raw []byte, l change.Logical) (any, error) {
	switch l {
	case change.Int16, change.Int32, change.Int64, change.Uint64:
		// Integers are most values: parse them once, here. Anything else
		// (null, a bad value) is textValue's to render or report.
		if n, ok := codec.ParseInt(raw); ok {
			return n, nil
		}
		if l == change.Uint64 && len(raw) > 0 && '0' <= raw[0] && raw[0] <= '9' {
			if n, err := strconv.ParseUint(string(raw), 10, 64); err == nil {
				return n, nil
			}
		}
	}
	s, null, err := textValue(raw, l, textStyle{zone: false})
	if err != nil || null {
		return nil, err
	}
	switch l {
	case change.Bool:
		if s == "true" {
			return int64(1), nil
		}
		return int64(0), nil
	case change.Int16, change.Int32, change.Int64, change.Uint64:
		// Not a plain number above, yet textValue took it: parse its text.
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
		return strconv.ParseUint(s, 10, 64)
	case change.Bytes:
		v, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("bytes column: not base64: %w", err)
		}
		return v, nil
	case change.Float32, change.Float64, change.Decimal:
		switch strings.ToLower(s) {
		case "nan", "infinity", "-infinity", "+infinity", "inf", "-inf":
			return nil, fmt.Errorf("%s column: MySQL cannot store %s", l, s)
		}
	}
	return s, nil
}

// myKeyExpr is the placeholder of a key value in a derived table, cast to
// the column's type: if the optimizer materializes the derived table, a
// decimal or date-time string would be compared as a double or as text.
func myKeyExpr(c change.Column) string {
	switch c.Logical {
	case change.Decimal:
		return "CAST(? AS " + myType(c) + ")"
	case change.Date:
		return "CAST(? AS DATE)"
	case change.Time:
		return "CAST(? AS TIME(6))"
	case change.Timestamp, change.TimestampTZ:
		return "CAST(? AS DATETIME(6))"
	}
	return "?"
}

// unburied returns which rows of groups are newer than their key's
// tombstone and the table's last truncate: older ones were deleted after
// they happened. (Rows not in groups are not looked up.)
func (m *MySQL) unburied(ctx context.Context, tx *sql.Tx, tg target, b *apply.TableBatch, groups []group) ([]bool, error) {
	// A table without deletes has no tombstones: one probe then saves
	// looking up every key, in chunks. It reads the snapshot the lookups
	// would read.
	var one int
	err := tx.QueryRowContext(ctx, fmt.Sprintf("SELECT 1 FROM %s WHERE table_name = ? LIMIT 1", tg.myTombstones()), tg.name).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return filterBuried(b, nil), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the tombstones of %s: %w", tg.my(), classifyMy(err))
	}
	keys := make([]any, 0, len(b.Rows)+1)
	keys = append(keys, []byte(truncateKey))
	for _, g := range groups {
		for _, i := range g.rows {
			keys = append(keys, b.Rows[i].Key)
		}
	}
	buried := map[string]string{}
	for len(keys) > 0 {
		n := min(len(keys), myMaxRows)
		q := fmt.Sprintf("SELECT `key`, position FROM %s WHERE table_name = ? AND `key` IN (?%s)",
			tg.myTombstones(), strings.Repeat(", ?", n-1))
		if err := m.readTombstones(ctx, tx, q, append([]any{tg.name}, keys[:n]...), buried); err != nil {
			return nil, fmt.Errorf("read the tombstones of %s: %w", tg.my(), err)
		}
		keys = keys[n:]
	}
	return filterBuried(b, buried), nil
}

func (m *MySQL) readTombstones(ctx context.Context, tx *sql.Tx, q string, args []any, buried map[string]string) error {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return classifyMy(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k []byte
		var pos string
		if err := rows.Scan(&k, &pos); err != nil {
			return err
		}
		buried[string(k)] = pos
	}
	return classifyMy(rows.Err())
}

func (m *MySQL) truncate(ctx context.Context, tx *sql.Tx, tg target, order []byte) error {
	q := fmt.Sprintf("DELETE FROM %s WHERE %s < ?", tg.my(), colPosition)
	args := []any{string(order)}
	if m.cfg.SoftDelete {
		q = fmt.Sprintf("UPDATE %s SET %s = TRUE, %s = 't', %s = UTC_TIMESTAMP(6), %s = ? WHERE %s < ?",
			tg.my(), colDeleted, colOp, colAppliedAt, colPosition, colPosition)
		args = append(args, string(order))
	}
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("truncate %s: %w", tg.my(), classifyMy(err))
	}
	if err := m.bury(ctx, tx, tg, []any{[]byte(truncateKey), string(order)}); err != nil {
		return fmt.Errorf("truncate %s: %w", tg.my(), err)
	}
	return nil
}

// bury upserts tombstones; args are key, position pairs. A tombstone only
// moves forward.
func (m *MySQL) bury(ctx context.Context, tx *sql.Tx, tg target, args []any) error {
	var b strings.Builder
	vals := make([]any, 0, len(args)/2*3)
	fmt.Fprintf(&b, "INSERT INTO %s (table_name, `key`, position) VALUES ", tg.myTombstones())
	for i := 0; i < len(args); i += 2 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?)")
		vals = append(vals, tg.name, args[i], args[i+1])
	}
	b.WriteString(" ON DUPLICATE KEY UPDATE position = IF(position < VALUES(position), VALUES(position), position)")
	_, err := tx.ExecContext(ctx, b.String(), vals...)
	return classifyMy(err)
}

// myChunks splits idx so that each statement has at most myMaxRows rows,
// myMaxParams placeholders and about myMaxBytes of values (a larger row
// goes alone).
func myChunks(idx []int, width int, rows []myRow) [][]int {
	per := max(1, min(myMaxRows, myMaxParams/max(width, 1)))
	var out [][]int
	start, size := 0, 0
	for n, i := range idx {
		if n > start && (n-start >= per || size+rows[i].size > myMaxBytes) {
			out = append(out, idx[start:n])
			start, size = n, 0
		}
		size += rows[i].size
	}
	if start < len(idx) {
		out = append(out, idx[start:])
	}
	return out
}

// applyGroup writes the rows of g: hard deletes with their tombstones,
// then upserts.
func (m *MySQL) applyGroup(ctx context.Context, tx *sql.Tx, tg target, b *apply.TableBatch, g group, rows []myRow) error {
	var cols []change.Column
	var keyAt []int // into cols
	for j, c := range b.Table.Columns {
		if g.present[j] {
			if c.Key {
				keyAt = append(keyAt, len(cols))
			}
			cols = append(cols, c)
		}
	}
	if len(keyAt) < len(keyColumns(b.Table)) {
		// Apply rejects the rows that lack a key column before writing.
		return apply.Permanent(fmt.Errorf("changes of %s lack key columns", tg.my()))
	}

	var dels, ups []int
	for _, i := range g.rows {
		if b.Rows[i].Op == change.OpDelete && !m.cfg.SoftDelete {
			dels = append(dels, i)
		} else {
			ups = append(ups, i)
		}
	}
	for _, ch := range myChunks(dels, len(keyAt)+3, rows) {
		if err := m.hardDelete(ctx, tx, tg, b, ch, rows, cols, keyAt); err != nil {
			return err
		}
	}
	for _, ch := range myChunks(ups, len(cols)+4, rows) {
		if err := m.upsert(ctx, tx, tg, b, ch, rows, cols); err != nil {
			return err
		}
	}
	return nil
}

// hardDelete removes the rows of keys older than their delete and leaves
// tombstones. The multi-row form joins a derived table of (keys, position)
// rows, which MySQL 8 and MariaDB both accept.
func (m *MySQL) hardDelete(ctx context.Context, tx *sql.Tx, tg target, b *apply.TableBatch, idx []int, rows []myRow, cols []change.Column, keyAt []int) error {
	var q strings.Builder
	args := make([]any, 0, len(idx)*(len(keyAt)+1))
	fmt.Fprintf(&q, "DELETE t FROM %s t JOIN (", tg.my())
	for n, i := range idx {
		if n == 0 {
			q.WriteString("SELECT ")
		} else {
			q.WriteString(" UNION ALL SELECT ")
		}
		for k, at := range keyAt {
			q.WriteString(myKeyExpr(cols[at]))
			if n == 0 {
				fmt.Fprintf(&q, " AS k%d", k)
			}
			q.WriteString(", ")
			args = append(args, rows[i].vals[at])
		}
		q.WriteString("?")
		if n == 0 {
			q.WriteString(" AS p")
		}
		args = append(args, string(b.Rows[i].Order))
	}
	q.WriteString(") s ON ")
	for k, at := range keyAt {
		if k > 0 {
			q.WriteString(" AND ")
		}
		fmt.Fprintf(&q, "t.%s = s.k%d", myIdent(cols[at].Name), k)
		if strings.Contains(myKeyType(cols[at], m.keyColl), "COLLATE") {
			// The derived table's text has the connection's collation;
			// compare as the key column does.
			q.WriteString(" COLLATE " + m.keyColl)
		}
	}
	fmt.Fprintf(&q, " WHERE t.%s < s.p", colPosition)
	if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
		return fmt.Errorf("delete from %s: %w", tg.my(), classifyMy(err))
	}
	tomb := make([]any, 0, 2*len(idx))
	for _, i := range idx {
		tomb = append(tomb, b.Rows[i].Key, string(b.Rows[i].Order))
	}
	if err := m.bury(ctx, tx, tg, tomb); err != nil {
		return fmt.Errorf("tombstones of %s: %w", tg.my(), err)
	}
	return nil
}

// upsert inserts rows idx or updates the target rows older than them.
// ON DUPLICATE KEY UPDATE assigns left to right and later assignments see
// the new values, so the position, which every guard reads, goes last.
func (m *MySQL) upsert(ctx context.Context, tx *sql.Tx, tg target, b *apply.TableBatch, idx []int, rows []myRow, cols []change.Column) error {
	var q strings.Builder
	fmt.Fprintf(&q, "INSERT INTO %s (", tg.my())
	for _, c := range cols {
		q.WriteString(myIdent(c.Name) + ", ")
	}
	fmt.Fprintf(&q, "%s, %s, %s", colOp, colAppliedAt, colPosition)
	if m.cfg.SoftDelete {
		q.WriteString(", " + colDeleted)
	}
	q.WriteString(") VALUES ")
	row := "(" + strings.Repeat("?, ", len(cols)) + "?, UTC_TIMESTAMP(6), ?"
	if m.cfg.SoftDelete {
		row += ", ?"
	}
	row += ")"
	args := make([]any, 0, len(idx)*(len(cols)+3))
	for n, i := range idx {
		if n > 0 {
			q.WriteString(", ")
		}
		q.WriteString(row)
		r := &b.Rows[i]
		args = append(args, rows[i].vals...)
		args = append(args, string(r.Op), string(r.Order))
		if m.cfg.SoftDelete {
			args = append(args, r.Op == change.OpDelete)
		}
	}
	q.WriteString(" ON DUPLICATE KEY UPDATE ")
	set := func(name string) {
		fmt.Fprintf(&q, "%[1]s = IF(%[2]s < VALUES(%[2]s), VALUES(%[1]s), %[1]s), ", name, colPosition)
	}
	for _, c := range cols {
		if !c.Key {
			set(myIdent(c.Name))
		}
	}
	set(colOp)
	set(colAppliedAt)
	if m.cfg.SoftDelete {
		set(colDeleted)
	}
	fmt.Fprintf(&q, "%[1]s = IF(%[1]s < VALUES(%[1]s), VALUES(%[1]s), %[1]s)", colPosition)
	if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
		return fmt.Errorf("upsert into %s: %w", tg.my(), classifyMy(err))
	}
	return nil
}

// classifyMy marks errors about the data (a value out of range, too long,
// malformed, NULL in a NOT NULL column, a failed constraint, a statement
// the server's max_allowed_packet refuses) permanent; everything else
// (connections, deadlocks, lock wait timeouts, a server shutting down) is
// transient.
func classifyMy(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, mysql.ErrPktTooLarge) {
		return apply.Permanent(err)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1048, // column cannot be null
			1153, 1301, // packet or result larger than max_allowed_packet
			1264, 1690, // out of range
			1265,       // data truncated
			1292,       // incorrect date-time value
			1366, 1367, // incorrect value
			1406, // data too long
			1411, // incorrect value for function
			3140, // invalid JSON (MySQL)
			4025: // constraint failed (MariaDB's JSON check)
			return apply.Permanent(err)
		}
	}
	return err
}
