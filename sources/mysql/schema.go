package mysql

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// table is a captured table's shape.
type table struct {
	name string // db.table
	cols []column
	// charset is the table's default character set, which columns added
	// without one take.
	charset string
	t       *change.Table
	// counter numbers the table's events in the transaction gen
	// (transaction.data_collection_order).
	counter int64
	gen     uint64
}

// errMissing says a table no longer exists.
type errMissing struct{ name string }

func (e errMissing) Error() string { return "table " + e.name + " does not exist" }

// checkServer verifies the binlog settings and privileges and returns the
// server's flavor (mysql or mariadb).
func checkServer(conn *client.Conn, serverID uint32) (string, error) {
	flavor := gmysql.MySQLFlavor
	if strings.Contains(strings.ToLower(conn.GetServerVersion()), "mariadb") {
		flavor = gmysql.MariaDBFlavor
	}
	vars := map[string]string{}
	r, err := conn.Execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', 'server_id', 'binlog_row_value_options')")
	if err != nil {
		return "", fmt.Errorf("read server variables: %w", err)
	}
	for i := range r.Values {
		k, _ := r.GetString(i, 0)
		v, _ := r.GetString(i, 1)
		vars[strings.ToLower(k)] = strings.ToUpper(v)
	}
	var problems []string
	if vars["log_bin"] != "ON" && vars["log_bin"] != "1" {
		problems = append(problems, "the binary log is off: start the server with log_bin (e.g. log_bin = mysql-bin in my.cnf) and restart it")
	}
	if vars["binlog_format"] != "ROW" {
		problems = append(problems, fmt.Sprintf("binlog_format is %s: row events are needed: SET GLOBAL binlog_format = 'ROW' (and in my.cnf)", vars["binlog_format"]))
	}
	if img := vars["binlog_row_image"]; img != "" && img != "FULL" {
		problems = append(problems, fmt.Sprintf("binlog_row_image is %s: full before and after images are needed: SET GLOBAL binlog_row_image = 'FULL' (and in my.cnf)", img))
	}
	if strings.Contains(vars["binlog_row_value_options"], "PARTIAL_JSON") {
		problems = append(problems, "binlog_row_value_options is PARTIAL_JSON (MySQL 8): JSON updates would be logged as diffs, not values: SET GLOBAL binlog_row_value_options = '' (and in my.cnf)")
	}
	if vars["server_id"] == fmt.Sprint(serverID) {
		problems = append(problems, fmt.Sprintf("source.server_id %d is the server's own server_id: choose another, unique among its replicas", serverID))
	}
	grants, err := conn.Execute("SHOW GRANTS")
	if err != nil {
		return "", fmt.Errorf("read grants: %w", err)
	}
	var all strings.Builder
	for i := range grants.Values {
		g, _ := grants.GetString(i, 0)
		all.WriteString(strings.ToUpper(g) + "\n")
	}
	gs := all.String()
	has := func(p ...string) bool {
		for _, x := range p {
			if strings.Contains(gs, x) {
				return true
			}
		}
		return false
	}
	if !has("ALL PRIVILEGES", "REPLICATION SLAVE", "REPLICATION REPLICA") {
		problems = append(problems, "the user lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <user>")
	}
	if !has("ALL PRIVILEGES", "REPLICATION CLIENT", "BINLOG MONITOR") {
		problems = append(problems, "the user lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB): GRANT REPLICATION CLIENT ON *.* TO <user>")
	}
	if len(problems) > 0 {
		return "", capture.Fatal(errors.New(strings.Join(problems, "; ")))
	}
	return flavor, nil
}

// reportHost is the host Tideline registers its binlog dump under
// (COM_REGISTER_SLAVE, shown by SHOW REPLICAS): "tideline-" and the
// pipeline's name, cut to 60 characters (older servers keep no more).
func reportHost(pipeline string) string {
	h := "tideline-" + pipeline
	if len(h) > 60 {
		h = h[:60] // pipeline names are ASCII (config nameRe)
	}
	return h
}

// checkReplicaID makes sure no other replica is connected with serverID:
// the server would drop one of the two connections each time the other
// registers, and both would read with gaps and restarts. A replica that
// just went away (a killed Tideline) can stay listed for a moment, so a
// conflict must last wait before it is reported. A replica registered
// with serverID under self (this pipeline's reportHost) is this pipeline's
// own earlier dump, which a network partition can leave listed for longer
// than wait: it is not a conflict, and the server ends that stale dump
// when the new one registers with the same server_id.
func checkReplicaID(ctx context.Context, conn *client.Conn, serverID uint32, self string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		other, err := replicaWithID(conn, serverID, self)
		if err != nil || other == "" {
			// A user without the privilege to list replicas skips the
			// check; the dump itself still works.
			return nil
		}
		if time.Now().After(deadline) {
			return capture.Fatal(fmt.Errorf("source.server_id %d is in use by another replica of the server (%s): "+
				"every replica, Tideline pipelines included, needs its own server_id: set source.server_id to an unused number", serverID, other))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// replicaWithID returns a description of a registered replica with
// serverID whose host is not self, or "".
func replicaWithID(conn *client.Conn, serverID uint32, self string) (string, error) {
	var r *gmysql.Result
	var err error
	for _, q := range []string{"SHOW REPLICAS", "SHOW SLAVE HOSTS"} {
		if r, err = conn.Execute(q); err == nil {
			break
		}
	}
	if err != nil {
		return "", err
	}
	// MariaDB says Server_id, MySQL 8 Server_Id.
	col := func(name string) int {
		for n, i := range r.FieldNames {
			if strings.EqualFold(n, name) {
				return i
			}
		}
		return -1
	}
	idCol, hostCol, portCol := col("Server_id"), col("Host"), col("Port")
	if idCol < 0 {
		return "", errors.New("no Server_id column")
	}
	for i := range r.Values {
		id, _ := r.GetUint(i, idCol)
		if uint32(id) != serverID {
			continue
		}
		var host string
		var port int64
		if hostCol >= 0 {
			host, _ = r.GetString(i, hostCol)
		}
		if host == self {
			continue
		}
		if portCol >= 0 {
			port, _ = r.GetInt(i, portCol)
		}
		return fmt.Sprintf("registered as host %q port %d", host, port), nil
	}
	return "", nil
}

// resolveTables expands db.table patterns ('*' wildcards) into the base
// tables they match, each as "db.table", plus known (tables the schema
// history holds, which may no longer exist). A pattern that matches nothing
// is an error.
func resolveTables(conn *client.Conn, patterns []string, known []string) ([]string, error) {
	seen := map[string]bool{}
	var out, problems []string
	for _, p := range patterns {
		m := newMatcher([]string{p})
		db, t, _ := strings.Cut(p, ".")
		r, err := conn.Execute(`SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
			WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA LIKE ? AND TABLE_NAME LIKE ?
			AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
			ORDER BY 1, 2`, like(db), like(t))
		if err != nil {
			return nil, fmt.Errorf("look up tables %q: %w", p, err)
		}
		found := len(r.Values) > 0
		for i := range r.Values {
			d, _ := r.GetString(i, 0)
			n, _ := r.GetString(i, 1)
			if name := d + "." + n; !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
		for _, name := range known {
			if m.match(name) {
				found = true
				if !seen[name] {
					seen[name] = true
					out = append(out, name)
				}
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("source.tables: %q matches no table (db.table; does it exist?)", p))
		}
	}
	if len(problems) > 0 {
		return nil, capture.Fatal(errors.New(strings.Join(problems, "; ")))
	}
	return out, nil
}

// matcher tells whether a db.table is captured, as resolveTables' LIKE
// does: '*' matches any run of characters within one part, letters match
// regardless of case, and the system databases are never captured.
type matcher []string

func newMatcher(patterns []string) matcher { return matcher(patterns) }

func (m matcher) match(name string) bool {
	db, t, _ := strings.Cut(name, ".")
	switch strings.ToLower(db) {
	case "mysql", "information_schema", "performance_schema", "sys":
		return false
	}
	for _, p := range m {
		pd, pt, _ := strings.Cut(p, ".")
		if glob(strings.ToLower(pd), strings.ToLower(db)) && glob(strings.ToLower(pt), strings.ToLower(t)) {
			return true
		}
	}
	return false
}

// filter returns the names that match.
func (m matcher) filter(names []string) []string {
	var out []string
	for _, n := range names {
		if m.match(n) {
			out = append(out, n)
		}
	}
	return out
}

// glob matches s against p, where '*' matches any run of characters.
func glob(p, s string) bool {
	star := strings.IndexByte(p, '*')
	if star < 0 {
		return p == s
	}
	if !strings.HasPrefix(s, p[:star]) {
		return false
	}
	rest := p[star+1:]
	for i := star; i <= len(s); i++ {
		if glob(rest, s[i:]) {
			return true
		}
	}
	return false
}

func like(p string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `*`, `%`).Replace(p)
}

// loadTable reads a table's columns, in order, and its default character
// set from information_schema.
func loadTable(conn *client.Conn, name, prefix string) (*table, error) {
	db, t, _ := strings.Cut(name, ".")
	r, err := conn.Execute(`SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COALESCE(CHARACTER_SET_NAME, ''), COLUMN_KEY
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, db, t)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	if len(r.Values) == 0 {
		return nil, errMissing{name}
	}
	tab := &table{name: name}
	for i := range r.Values {
		col, _ := r.GetString(i, 0)
		dt, _ := r.GetString(i, 1)
		ct, _ := r.GetString(i, 2)
		cs, _ := r.GetString(i, 3)
		key, _ := r.GetString(i, 4)
		tab.cols = append(tab.cols, newColumn(col, dt, ct, cs, key == "PRI"))
	}
	cs, err := conn.Execute(`SELECT COALESCE(c.CHARACTER_SET_NAME, '') FROM information_schema.TABLES t
		JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION
		WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?`, db, t)
	if err != nil {
		return nil, fmt.Errorf("read the character set of %s: %w", name, err)
	}
	if len(cs.Values) > 0 {
		tab.charset, _ = cs.GetString(0, 0)
	}
	tab.build(prefix)
	return tab, nil
}

// dbCharset reads a database's default character set.
func dbCharset(conn *client.Conn, db string) (string, error) {
	r, err := conn.Execute("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", db)
	if err != nil {
		return "", fmt.Errorf("read the default character set of database %s: %w", db, err)
	}
	if len(r.Values) == 0 {
		return "", fmt.Errorf("database %s does not exist", db)
	}
	cs, err := r.GetString(0, 0)
	if err != nil || cs == "" {
		return "", fmt.Errorf("database %s has no default character set in information_schema.SCHEMATA", db)
	}
	return cs, nil
}

// masterStatus reads the current binlog position.
func masterStatus(conn *client.Conn, flavor string) (position, error) {
	r, err := conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		// MySQL 8.4 has only the new name.
		var err2 error
		if r, err2 = conn.Execute("SHOW BINARY LOG STATUS"); err2 != nil {
			return position{}, fmt.Errorf("read the binlog position (SHOW MASTER STATUS needs REPLICATION CLIENT): %w", err)
		}
	}
	if len(r.Values) == 0 {
		return position{}, capture.Fatal(errors.New("SHOW MASTER STATUS is empty: the binary log is off"))
	}
	var p position
	p.File, _ = r.GetString(0, 0)
	pos, _ := r.GetUint(0, 1)
	p.Pos = uint32(pos)
	q := "SELECT @@GLOBAL.gtid_executed"
	if flavor == gmysql.MariaDBFlavor {
		q = "SELECT @@GLOBAL.gtid_binlog_pos"
	}
	if g, err := conn.Execute(q); err == nil && len(g.Values) > 0 {
		p.GTID, _ = g.GetString(0, 0)
	}
	return p, nil
}

// snapshot reads every table in one consistent-snapshot transaction, whose
// binlog position and table shapes are read under a brief global read lock
// (which holds DDL off), and hands the rows over as op "r". It returns that
// position, where the stream starts with no gap and no overlap, and the
// shapes there.
func (s *Source) snapshot(ctx context.Context, ep endpoint, h capture.Handler, names []string) (position, map[string]*table, error) {
	conn, err := s.connect(ctx, ep)
	if err != nil {
		return position{}, nil, err
	}
	defer conn.Close()
	flavor := gmysql.MySQLFlavor
	if strings.Contains(strings.ToLower(conn.GetServerVersion()), "mariadb") {
		flavor = gmysql.MariaDBFlavor
	}
	if _, err := conn.Execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		return position{}, nil, err
	}
	locked := time.Now()
	if _, err := conn.Execute("FLUSH TABLES WITH READ LOCK"); err != nil {
		return position{}, nil, capture.Fatal(fmt.Errorf("FLUSH TABLES WITH READ LOCK (needs the RELOAD privilege): %w", err))
	}
	if _, err := conn.Execute("START TRANSACTION WITH CONSISTENT SNAPSHOT"); err != nil {
		_, _ = conn.Execute("UNLOCK TABLES")
		return position{}, nil, err
	}
	pos, err := masterStatus(conn, flavor)
	tables := map[string]*table{}
	for _, name := range names {
		if err != nil {
			break
		}
		tables[name], err = loadTable(conn, name, s.cfg.TopicPrefix)
	}
	if _, uerr := conn.Execute("UNLOCK TABLES"); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return position{}, nil, err
	}
	s.log.Info("snapshot position read under a global read lock", zap.Duration("lock_held", time.Since(locked)),
		zap.String("file", pos.File), zap.Uint32("pos", pos.Pos), zap.String("gtid", pos.GTID))
	pos.Snapshot = true

	enc := codec.NewEncoder(s.cfg.Version)
	b := &change.Batch{}
	var scratch []byte
	var after []change.Value
	now := time.Now().UnixMilli()
	first := true
	var total int64
	for _, name := range names {
		tab := tables[name]
		db, t, _ := strings.Cut(name, ".")
		var res gmysql.Result
		err := conn.ExecuteSelectStreaming(fmt.Sprintf("SELECT * FROM `%s`.`%s`", strings.ReplaceAll(db, "`", "``"), strings.ReplaceAll(t, "`", "``")), &res,
			func(row []gmysql.FieldValue) error {
				scratch = scratch[:0]
				after = after[:0]
				for i := range row {
					v := row[i].Value()
					if v == nil {
						after = append(after, change.Value{})
						continue
					}
					start := len(scratch)
					var err error
					scratch, err = appendValue(scratch, &tab.cols[i], v, false)
					if err != nil {
						return capture.Fatal(fmt.Errorf("table %s column %s (%s): cannot convert the value: %w", name, tab.cols[i].name, tab.cols[i].colType, err))
					}
					after = append(after, change.Value{Kind: change.Present, JSON: scratch[start:len(scratch):len(scratch)]})
				}
				snap := "true"
				if first {
					snap, first = "first", false
				}
				ev := change.Event{Op: change.OpRead, Table: tab.t, After: after, Source: change.Source{Connector: "mysql", Name: s.cfg.Name, TsMs: now, Snapshot: snap,
					File: pos.File, Pos: uint64(pos.Pos)}}
				value, order := enc.ValueOrder(&ev, now)
				b.Add(change.Record{Topic: tab.t.Topic, Key: enc.Key(&ev), Value: value, Order: order, Table: tab.t, Op: change.OpRead})
				total++
				if len(b.Records) >= s.cfg.BatchRecords || b.Bytes >= s.cfg.BatchBytes {
					// Hold the newest row back: the snapshot's very last
					// row is marked "last" when the snapshot ends.
					held := b.Records[len(b.Records)-1]
					b.Records = b.Records[:len(b.Records)-1]
					b.Bytes -= held.Size()
					if err := h.Handle(ctx, b); err != nil {
						return err
					}
					b.Reset()
					b.Add(held)
				}
				return nil
			}, nil)
		if err != nil {
			return position{}, nil, fmt.Errorf("read %s: %w", name, err)
		}
	}
	if _, err := conn.Execute("COMMIT"); err != nil {
		return position{}, nil, err
	}
	if n := len(b.Records); n > 0 {
		// The source block follows the row, so the last match is the
		// envelope's own field; "true" and "last" have one length.
		v := b.Records[n-1].Value
		if i := bytes.LastIndex(v, []byte(`"snapshot":"true"`)); i >= 0 {
			copy(v[i+len(`"snapshot":"`):], "last")
		}
		if err := h.Handle(ctx, b); err != nil {
			return position{}, nil, err
		}
	}
	if err := h.Drain(ctx); err != nil {
		return position{}, nil, err
	}
	s.log.Info("initial snapshot delivered", zap.Int64("rows", total), zap.Int("tables", len(tables)))
	return pos, tables, nil
}

// Sample reads the shape and up to limit rows of every table cfg
// captures (cfg.DSN, cfg.Tables, cfg.TopicPrefix), converted as the
// snapshot converts them. It takes no lock and changes nothing on the
// server.
func Sample(ctx context.Context, cfg Config, limit int) ([]change.Sample, error) {
	ep, err := parseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg}
	s.connected.Store(true) // errors are returned, not fatal
	conn, err := s.connect(ctx, ep)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	names, err := resolveTables(conn, cfg.Tables, nil)
	if err != nil {
		return nil, err
	}
	out := make([]change.Sample, 0, len(names))
	for _, name := range names {
		tab, err := loadTable(conn, name, cfg.TopicPrefix)
		if err != nil {
			return nil, err
		}
		db, t, _ := strings.Cut(name, ".")
		smp := change.Sample{Table: tab.t}
		var res gmysql.Result
		err = conn.ExecuteSelectStreaming(fmt.Sprintf("SELECT * FROM `%s`.`%s` LIMIT %d", strings.ReplaceAll(db, "`", "``"), strings.ReplaceAll(t, "`", "``"), max(limit, 0)), &res,
			func(row []gmysql.FieldValue) error {
				vals := make([]change.Value, 0, len(row))
				for i := range row {
					v := row[i].Value()
					if v == nil {
						vals = append(vals, change.Value{})
						continue
					}
					b, err := appendValue(nil, &tab.cols[i], v, false)
					if err != nil {
						return fmt.Errorf("table %s column %s (%s): cannot convert the value: %w", name, tab.cols[i].name, tab.cols[i].colType, err)
					}
					vals = append(vals, change.Value{Kind: change.Present, JSON: b})
				}
				smp.Rows = append(smp.Rows, vals)
				return nil
			}, nil)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		out = append(out, smp)
	}
	return out, nil
}
