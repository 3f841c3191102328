package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// tableRef is a captured table found in the catalog.
type tableRef struct {
	oid    uint32
	schema string
	name   string
	// ident is relreplident: d(efault, the primary key), f(ull), i(ndex),
	// n(othing).
	ident       byte
	hasPK       bool
	partitioned bool
}

func (t tableRef) qualified() string {
	return pgx.Identifier{t.schema, t.name}.Sanitize()
}

func (t tableRef) String() string { return t.schema + "." + t.name }

// connect opens a regular connection with the session settings the type
// converters expect.
func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, capture.Fatal(fmt.Errorf("source.dsn: %w", err))
	}
	maps.Copy(cfg.RuntimeParams, sessionParams)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", config.Redact(dsn), unwrapConnect(err))
	}
	return conn, nil
}

// connectReplication opens a logical replication connection.
func connectReplication(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, capture.Fatal(fmt.Errorf("source.dsn: %w", err))
	}
	maps.Copy(cfg.RuntimeParams, sessionParams)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection to %s: %w", config.Redact(dsn), unwrapConnect(err))
	}
	return conn, nil
}

// unwrapConnect keeps pgconn's message but drops the DSN it may repeat.
func unwrapConnect(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return err
}

// checkServer verifies the server-wide preconditions: logical WAL and a role
// allowed to replicate.
func checkServer(ctx context.Context, conn *pgx.Conn) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return capture.Fatal(fmt.Errorf("wal_level is %q, logical replication needs wal_level = logical: set it in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL", walLevel))
	}
	var role string
	var canReplicate bool
	if err := conn.QueryRow(ctx,
		`SELECT current_user, rolreplication OR rolsuper OR EXISTS (
			SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_replication' AND pg_has_role(current_user, r.oid, 'member'))
		FROM pg_roles WHERE rolname = current_user`,
	).Scan(&role, &canReplicate); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !canReplicate {
		return capture.Fatal(fmt.Errorf("role %q may not replicate: run ALTER ROLE %s WITH REPLICATION (as a superuser)", role, pgx.Identifier{role}.Sanitize()))
	}
	return nil
}

// resolveTables expands the schema.table patterns ('*' wildcards) into the
// tables they match, and checks each one: readable, and with a primary key
// or a replica identity that lets updates and deletes be published.
func resolveTables(ctx context.Context, conn *pgx.Conn, patterns []string) ([]tableRef, error) {
	seen := map[uint32]bool{}
	var out []tableRef
	var problems []string
	for _, p := range patterns {
		schema, table, _ := strings.Cut(p, ".")
		rows, err := conn.Query(ctx, `
			SELECT c.oid, n.nspname, c.relname, c.relreplident, c.relkind = 'p',
			       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
			       has_table_privilege(c.oid, 'SELECT')
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
			  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
			  AND n.nspname LIKE $1 AND c.relname LIKE $2
			ORDER BY n.nspname, c.relname`, likePattern(schema), likePattern(table))
		if err != nil {
			return nil, fmt.Errorf("look up tables %q: %w", p, err)
		}
		matched := 0
		for rows.Next() {
			var t tableRef
			var canSelect bool
			var ident rune
			if err := rows.Scan(&t.oid, &t.schema, &t.name, &ident, &t.partitioned, &t.hasPK, &canSelect); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up tables %q: %w", p, err)
			}
			t.ident = byte(ident)
			matched++
			if seen[t.oid] {
				continue
			}
			seen[t.oid] = true
			switch {
			case !canSelect:
				problems = append(problems, fmt.Sprintf("table %s: no SELECT privilege: GRANT SELECT ON %s TO <tideline role>", t, t.qualified()))
			case t.ident == 'n':
				problems = append(problems, fmt.Sprintf("table %s has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be captured: ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key) or FULL", t, t.qualified()))
			case t.ident == 'd' && !t.hasPK:
				problems = append(problems, fmt.Sprintf("table %s has no primary key, so PostgreSQL would reject its updates and deletes once published: add a primary key, or ALTER TABLE %s REPLICA IDENTITY FULL", t, t.qualified()))
			}
			out = append(out, t)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up tables %q: %w", p, err)
		}
		if matched == 0 {
			problems = append(problems, fmt.Sprintf("source.tables: %q matches no table (schema.table; is the name right, and does it exist in this database?)", p))
		}
	}
	if len(problems) > 0 {
		return nil, capture.Fatal(errors.New(strings.Join(problems, "; ")))
	}
	return out, nil
}

// likePattern turns a '*' pattern into a LIKE pattern, escaping LIKE's own
// wildcards.
func likePattern(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `*`, `%`)
	return r.Replace(p)
}

// ensurePublication creates the publication for tables, or adds the tables
// it lacks. It publishes inserts, updates, deletes and truncates.
func ensurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []tableRef) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up publication %s: %w", name, err)
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.qualified()
	}
	if !exists {
		// A partitioned table's changes are published as its own, not
		// its partitions', so snapshot and stream share one topic.
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pgx.Identifier{name}.Sanitize(), strings.Join(names, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return capture.Fatal(fmt.Errorf("create publication %s: %w (the role must own the tables; or create it yourself: %s)", name, err, sql))
		}
		return nil
	}
	var viaRoot bool
	if err := conn.QueryRow(ctx, "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", name).Scan(&viaRoot); err != nil {
		return fmt.Errorf("read publication %s: %w", name, err)
	}
	for _, t := range tables {
		if t.partitioned && !viaRoot {
			return capture.Fatal(fmt.Errorf("publication %s publishes the partitions of the partitioned table %s under their own names: ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
				name, t, pgx.Identifier{name}.Sanitize()))
		}
	}
	rows, err := conn.Query(ctx, "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1", name)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", name, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read publication %s: %w", name, err)
	}
	inPub := map[string]bool{}
	for _, h := range have {
		inPub[h] = true
	}
	var missing []string
	for _, t := range tables {
		var q string
		if err := conn.QueryRow(ctx, "SELECT format('%I.%I', $1::text, $2::text)", t.schema, t.name).Scan(&q); err != nil {
			return fmt.Errorf("quote %s: %w", t, err)
		}
		if !inPub[q] {
			missing = append(missing, t.qualified())
		}
	}
	if len(missing) > 0 {
		sql := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pgx.Identifier{name}.Sanitize(), strings.Join(missing, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return capture.Fatal(fmt.Errorf("add tables to publication %s: %w (run as the tables' owner: %s)", name, err, sql))
		}
	}
	return nil
}

// slotState is what pg_replication_slots says of the slot.
type slotState struct {
	exists    bool
	plugin    string
	database  string
	walStatus string
}

// usable checks that an existing slot can be streamed from here.
func (s slotState) usable(name, database string) error {
	switch {
	case !s.exists:
		return nil
	case s.plugin != "pgoutput":
		return capture.Fatal(fmt.Errorf("replication slot %s uses plugin %q, not pgoutput: drop it (SELECT pg_drop_replication_slot('%s')) or set source.slot", name, s.plugin, name))
	case s.database != database:
		return capture.Fatal(fmt.Errorf("replication slot %s belongs to database %q, not %q: set source.slot to another name", name, s.database, database))
	case s.walStatus == "lost":
		return capture.Fatal(fmt.Errorf("replication slot %s was invalidated by PostgreSQL (it fell behind max_slot_wal_keep_size) and its changes are lost: drop it (SELECT pg_drop_replication_slot('%s')) and take a new snapshot", name, name))
	}
	return nil
}

func readSlot(ctx context.Context, conn *pgx.Conn, name string) (slotState, error) {
	var s slotState
	err := conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&s.plugin, &s.database, &s.walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("look up replication slot %s: %w", name, err)
	}
	s.exists = true
	return s, nil
}

// keyColumns returns the names of the columns that identify a row of the
// table: the replica identity index's with REPLICA IDENTITY USING INDEX
// (deletes carry only those), else the primary key's, else none.
func keyColumns(ctx context.Context, conn *pgx.Conn, oid uint32) (map[string]bool, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.attname FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1
		  AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END`, oid)
	if err != nil {
		return nil, fmt.Errorf("read key of table %d: %w", oid, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read key of table %d: %w", oid, err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// typeInfo is what the source needs of a column type.
type typeInfo struct {
	name    string
	conv    conv
	delim   byte // the array delimiter of this type's values (',' but ';' for box)
	logical change.Logical
}

// typeName is the column type as sinks see it: the type's name, with the
// precision and scale of a numeric, or the length of a varchar or char,
// from the column's type modifier.
func (ti typeInfo) typeName(typmod int32) string {
	switch ti.name {
	case "numeric":
		if typmod >= 4 {
			m := typmod - 4
			return fmt.Sprintf("numeric(%d,%d)", (m>>16)&0xffff, m&0xffff)
		}
	case "varchar", "bpchar":
		if typmod >= 4 {
			return fmt.Sprintf("%s(%d)", ti.name, typmod-4)
		}
	}
	return ti.name
}

// types resolves type OIDs to names and converters, asking the catalog for
// types it has not seen (enums, domains, arrays of them). Not safe for
// concurrent use.
type types struct {
	conn  *pgx.Conn
	cache map[uint32]typeInfo
}

func newTypes(conn *pgx.Conn) *types { return &types{conn: conn, cache: map[uint32]typeInfo{}} }

func (ts *types) lookup(ctx context.Context, oid uint32) (typeInfo, error) {
	if ti, ok := ts.cache[oid]; ok {
		return ti, nil
	}
	var (
		name     string
		elem     uint32
		category string
		base     uint32
		delim    string
		arrayIn  string
	)
	err := ts.conn.QueryRow(ctx, `SELECT t.typname, t.typelem, t.typcategory, t.typbasetype, t.typdelim::text, t.typinput::text
		FROM pg_type t WHERE t.oid = $1`, oid).
		Scan(&name, &elem, &category, &base, &delim, &arrayIn)
	if err != nil {
		return typeInfo{}, fmt.Errorf("look up type %d: %w", oid, err)
	}
	ti := typeInfo{name: name, delim: ','}
	if len(delim) == 1 {
		ti.delim = delim[0]
	}
	switch {
	case category == "A" && elem != 0 && arrayIn == "array_in":
		et, err := ts.lookup(ctx, elem)
		if err != nil {
			return typeInfo{}, err
		}
		ti.conv = arrayConv(et.conv, et.delim)
		ti.logical = change.Array
	case base != 0: // a domain converts like its base type
		bt, err := ts.lookup(ctx, base)
		if err != nil {
			return typeInfo{}, err
		}
		ti.conv = bt.conv
		ti.logical = bt.logical
	default:
		// Including int2vector and oidvector: arrays in the catalog, but
		// printed space-separated without braces; they stay strings.
		ti.conv = scalarConv(oid)
		ti.logical = scalarLogical(oid)
	}
	ts.cache[oid] = ti
	return ti, nil
}
