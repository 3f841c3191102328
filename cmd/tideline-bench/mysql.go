package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/kafka"
)

// The MySQL workloads run on a throwaway MariaDB (internal/testenv), started
// after the PostgreSQL ones and stopped before the report:
//
//	M-A  big transactions: -mysql-big rows in transactions of -tx-size rows
//	M-B  single-row transactions: -mysql-single transactions
//
// Both readers of a workload read the same binlog range: the binlog position
// (SHOW MASTER STATUS and @@gtid_binlog_pos) is recorded before the load and
// after it. mariadb-binlog reads the range from the server
// (--read-from-remote-server, --start-position .. --stop-position) into
// /dev/null, as pg_recvlogical does for PostgreSQL; Tideline starts from the
// position before, written into its offsets topic (snapshot never would
// start at the current position), and is timed until Kafka acknowledged
// every event. go-mysql's BinlogSyncer reading the same range, raw and
// parsed, is timed for the record: it is the library Tideline reads with.

// defaultMySQLSingle is -mysql-single's default. M-B's readers take about
// a minute at 1,000,000 (mariadb-binlog alone 15 s, twice) and the whole
// default run stays under 5 minutes on the 2-core machine; lower it with
// -mysql-single when time is short.
const defaultMySQLSingle = 1_000_000

// mysqlServerConf relaxes durability as the PostgreSQL load generators do
// with synchronous_commit = off, and keeps the load in memory: the
// generators are not what is measured.
var mysqlServerConf = map[string]string{
	"innodb_flush_log_at_trx_commit": "0",
	"sync_binlog":                    "0",
	"innodb_buffer_pool_size":        "512M",
	"innodb_log_file_size":           "512M",
	"innodb_doublewrite":             "0",
	// A 10,000-row transaction (about 1.3 MiB of row events) stays in the
	// binlog cache instead of spilling to a temporary file.
	"binlog_cache_size": "4M",
	"max_binlog_size":   "1G",
}

// mysqlSchema is the MySQL workloads' schema, one statement a string.
var mysqlSchema = []string{
	// utf8mb4, as MySQL 8 and Debian's MariaDB configuration default to
	// (a server started without a configuration defaults to latin1).
	"CREATE DATABASE bench CHARACTER SET utf8mb4",
	`CREATE TABLE bench.m_a (id BIGINT PRIMARY KEY, name VARCHAR(64), qty INT, price DECIMAL(12,2), note VARCHAR(64), at TIMESTAMP(6) NULL) ENGINE=InnoDB`,
	`CREATE TABLE bench.m_b (id BIGINT PRIMARY KEY, name VARCHAR(64), qty INT, price DECIMAL(12,2), note VARCHAR(64), at TIMESTAMP(6) NULL) ENGINE=InnoDB`,
	// One transaction per row, generated server-side (autocommit commits
	// each INSERT of the loop): a client round trip per transaction would
	// make the load generator, not the readers, the subject.
	`CREATE PROCEDURE bench.gen_b(first BIGINT, n INT)
BEGIN
  DECLARE i BIGINT DEFAULT first;
  WHILE i < first + n DO
    INSERT INTO bench.m_b VALUES (i, CONCAT('name-', i), i % 1000, (i % 100000) / 100, MD5(i), NOW(6));
    SET i = i + 1;
  END WHILE;
END`,
}

// binlogPos is a binlog position; its JSON is the MySQL source's stored
// position (sources/mysql).
type binlogPos struct {
	File string `json:"file"`
	Pos  uint32 `json:"pos"`
	GTID string `json:"gtid,omitempty"`
}

func (p binlogPos) String() string {
	return fmt.Sprintf("%s:%d (gtid %s)", p.File, p.Pos, p.GTID)
}

// mysqlEnv is the MariaDB server of the MySQL workloads.
type mysqlEnv struct {
	db     *testenv.MariaDB
	addr   string
	port   int
	binlog string // mariadb-binlog (or mysqlbinlog)
	// seq: the sequence engine (seq_1_to_N tables) is there.
	seq bool
}

// mysqlThroughput is one MySQL workload's result: throughput.recv holds the
// mariadb-binlog runs, walBytes the binlog bytes of the range.
type mysqlThroughput struct {
	throughput
	before, after binlogPos
	files         []string
	// goRaw and goParsed are go-mysql's BinlogSyncer reading the range,
	// with RawModeEnabled and with row decoding; goRows is the rows the
	// parsed read saw (a check of the range).
	goRaw, goParsed measure
	goRows          int
	// decoded is mariadb-binlog with -v --base64-output=decode-rows: rows
	// decoded into commented pseudo-SQL instead of base64 BINLOG statements.
	decoded    measure
	targetRate float64 // Tideline changes/s, 0 for none
}

// mysqlReport is the MySQL part of the report.
type mysqlReport struct {
	ran         bool
	skipped     string // why the workloads did not run
	err         error  // setup failure
	version     string
	binlogTool  string
	big, single mysqlThroughput
}

// workloadsMySQL starts MariaDB, runs M-A and M-B and stops it.
func (b *bench) workloadsMySQL(ctx context.Context) (rep mysqlReport) {
	tool, err := findBinary("mariadb-binlog", "mysqlbinlog")
	if err != nil {
		rep.skipped = "mariadb-binlog not found: install mariadb-client (and mariadb-server)"
		b.logf("MySQL workloads skipped: %s", rep.skipped)
		return rep
	}
	b.logf("starting MariaDB")
	db, err := testenv.StartMariaDB(ctx, testenv.MariaDBOptions{ExtraConf: mysqlServerConf})
	if errors.Is(err, testenv.ErrNotInstalled) {
		rep.skipped = err.Error()
		b.logf("MySQL workloads skipped: %s", rep.skipped)
		return rep
	}
	if err != nil {
		rep.err = fmt.Errorf("start mariadb: %w", err)
		return rep
	}
	defer func() {
		if err := db.Stop(); err != nil {
			b.logf("stop mariadb: %v", err)
		} else {
			b.logf("MariaDB stopped")
		}
	}()
	rep.ran = true
	me := &mysqlEnv{db: db, port: db.Port(), addr: fmt.Sprintf("127.0.0.1:%d", db.Port()), binlog: tool}
	if out, err := exec.CommandContext(ctx, tool, "--version").Output(); err == nil {
		rep.binlogTool = strings.TrimSpace(string(out))
	}
	b.logf("MariaDB at %s (log %s); raw reader %s", me.addr, db.LogPath(), tool)
	if err := b.mysqlSetup(ctx, me, &rep); err != nil {
		rep.err = err
		return rep
	}
	if b.o.mysqlBig > 0 && ctx.Err() == nil {
		rep.big = b.workloadMySQLBig(ctx, me)
	}
	if b.o.mysqlSingle > 0 && ctx.Err() == nil {
		rep.single = b.workloadMySQLSingle(ctx, me)
	}
	return rep
}

// findBinary returns the first of names in PATH or /usr/bin, /usr/sbin.
func findBinary(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
		for _, d := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin"} {
			p := d + "/" + n
			if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("none of %v found", names)
}

// mysqlConn connects as root to database db ("" for none).
func (me *mysqlEnv) conn(ctx context.Context, db string) (*client.Conn, error) {
	c, err := client.ConnectWithContext(ctx, me.addr, "root", "", db, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to mariadb: %w", err)
	}
	return c, nil
}

// exec runs statements on a new connection.
func (me *mysqlEnv) exec(ctx context.Context, sqls ...string) error {
	c, err := me.conn(ctx, "")
	if err != nil {
		return err
	}
	defer c.Close()
	for _, q := range sqls {
		if _, err := c.Execute(q); err != nil {
			return fmt.Errorf("%s: %w", firstLine(q), err)
		}
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// mysqlSetup creates the schema and reads the server's version.
func (b *bench) mysqlSetup(ctx context.Context, me *mysqlEnv, rep *mysqlReport) error {
	if err := me.exec(ctx, mysqlSchema...); err != nil {
		return fmt.Errorf("create mysql schema: %w", err)
	}
	c, err := me.conn(ctx, "bench")
	if err != nil {
		return err
	}
	defer c.Close()
	if r, err := c.Execute("SELECT VERSION()"); err == nil {
		rep.version, _ = r.GetString(0, 0)
	}
	if r, err := c.Execute("SELECT COUNT(*) FROM seq_1_to_3"); err == nil {
		n, _ := r.GetInt(0, 0)
		me.seq = n == 3
	}
	if !me.seq {
		b.logf("MariaDB has no sequence engine: M-A generates its rows with a recursive CTE")
	}
	return nil
}

// masterStatus returns the current binlog position.
func masterStatus(c *client.Conn) (binlogPos, error) {
	r, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		return binlogPos{}, fmt.Errorf("show master status: %w", err)
	}
	if len(r.Values) == 0 {
		return binlogPos{}, errors.New("show master status: empty (binary log off)")
	}
	var p binlogPos
	p.File, _ = r.GetString(0, 0)
	pos, _ := r.GetUint(0, 1)
	p.Pos = uint32(pos)
	g, err := c.Execute("SELECT @@GLOBAL.gtid_binlog_pos")
	if err != nil {
		return binlogPos{}, fmt.Errorf("read gtid_binlog_pos: %w", err)
	}
	p.GTID, _ = g.GetString(0, 0)
	return p, nil
}

// binlogRange returns the binlog files from before's to after's and the
// bytes between the two positions.
func binlogRange(c *client.Conn, before, after binlogPos) ([]string, uint64, error) {
	r, err := c.Execute("SHOW BINARY LOGS")
	if err != nil {
		return nil, 0, fmt.Errorf("show binary logs: %w", err)
	}
	var files []string
	var bytes uint64
	in := false
	for i := range r.Values {
		name, _ := r.GetString(i, 0)
		size, _ := r.GetUint(i, 1)
		if name == before.File {
			in = true
		}
		if !in {
			continue
		}
		files = append(files, name)
		lo, hi := uint64(0), size
		if name == before.File {
			lo = uint64(before.Pos)
		}
		if name == after.File {
			hi = uint64(after.Pos)
		}
		if hi > lo {
			bytes += hi - lo
		}
		if name == after.File {
			break
		}
	}
	if len(files) == 0 || files[len(files)-1] != after.File {
		return nil, 0, fmt.Errorf("binlog files %s .. %s not both listed by SHOW BINARY LOGS", before.File, after.File)
	}
	return files, bytes, nil
}

// gtidSeq returns the sequence number of domain 0's GTID in a MariaDB GTID
// position ("0-1-123"), -1 when there is none.
func gtidSeq(pos string) int64 {
	for _, g := range strings.Split(pos, ",") {
		parts := strings.Split(strings.TrimSpace(g), "-")
		if len(parts) == 3 && parts[0] == "0" {
			n, err := strconv.ParseInt(parts[2], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// loadRange records the binlog position, runs gen and records it again.
// It starts on a new binlog file, so that a workload's range is one file
// when it fits (max_binlog_size is 1 GiB).
func (b *bench) loadRange(ctx context.Context, me *mysqlEnv, res *mysqlThroughput, w string, gen func() error) error {
	c, err := me.conn(ctx, "bench")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Execute("FLUSH BINARY LOGS"); err != nil {
		return fmt.Errorf("flush binary logs: %w", err)
	}
	if res.before, err = masterStatus(c); err != nil {
		return err
	}
	b.logf("%s: binlog position before the load: %s", w, res.before)
	t0 := time.Now()
	if err := gen(); err != nil {
		return fmt.Errorf("generate workload %s: %w", w, err)
	}
	res.genTook = time.Since(t0)
	if res.after, err = masterStatus(c); err != nil {
		return err
	}
	if res.files, res.walBytes, err = binlogRange(c, res.before, res.after); err != nil {
		return err
	}
	b.logf("%s: generated in %s, %.1f MiB of binlog in %v; position after: %s", w, res.genTook.Round(time.Millisecond),
		float64(res.walBytes)/(1<<20), res.files, res.after)
	return nil
}

// workloadMySQLBig is workload M-A: rows inserted in big transactions.
func (b *bench) workloadMySQLBig(ctx context.Context, me *mysqlEnv) (res mysqlThroughput) {
	n := b.o.mysqlBig
	res.throughput = throughput{label: fmt.Sprintf("M-A: %s rows, %s per transaction", thousands(n), thousands(b.o.txSize)), events: n}
	res.targetRate = 100_000
	b.logf("M-A: generating %d rows in transactions of %d", n, b.o.txSize)
	err := b.loadRange(ctx, me, &res, "M-A", func() error {
		c, err := me.conn(ctx, "bench")
		if err != nil {
			return err
		}
		defer c.Close()
		last := time.Now()
		for lo := 1; lo <= n; lo += b.o.txSize {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			hi := min(lo+b.o.txSize-1, n)
			from := fmt.Sprintf("seq_%d_to_%d", lo, hi)
			if !me.seq {
				if lo == 1 {
					if _, err := c.Execute("SET SESSION max_recursive_iterations = 4294967295"); err != nil {
						return err
					}
				}
				from = fmt.Sprintf("(WITH RECURSIVE g(seq) AS (SELECT CAST(%d AS SIGNED) UNION ALL SELECT seq + 1 FROM g WHERE seq < %d) SELECT seq FROM g) s", lo, hi)
			}
			// Autocommit: one statement, one transaction.
			q := fmt.Sprintf(`INSERT INTO bench.m_a SELECT seq, CONCAT('name-', seq), seq %% 1000, (seq %% 100000) / 100, MD5(seq), NOW(6) FROM %s`, from)
			if _, err := c.Execute(q); err != nil {
				return err
			}
			if time.Since(last) > 5*time.Second {
				b.logf("M-A: %d/%d rows inserted", hi, n)
				last = time.Now()
			}
		}
		return nil
	})
	if err != nil {
		res.err = err
		return res
	}
	prof := ""
	if b.o.cpuProfile != "" {
		prof = b.o.cpuProfile + ".mysql"
	}
	b.measureMySQL(ctx, me, &res, "ma", "M-A", "bench.m_a", prof)
	return res
}

// workloadMySQLSingle is workload M-B: single-row transactions.
func (b *bench) workloadMySQLSingle(ctx context.Context, me *mysqlEnv) (res mysqlThroughput) {
	n := b.o.mysqlSingle
	res.throughput = throughput{label: fmt.Sprintf("M-B: %s single-row transactions", thousands(n)), events: n}
	conns := min(b.o.genConns, n)
	b.logf("M-B: generating %d single-row transactions on %d connections", n, conns)
	err := b.loadRange(ctx, me, &res, "M-B", func() error {
		mon, err := me.conn(ctx, "bench")
		if err != nil {
			return err
		}
		defer mon.Close()
		seq0 := int64(-1)
		if p, err := masterStatus(mon); err == nil {
			seq0 = gtidSeq(p.GTID)
		}
		t0 := time.Now()
		g, gctx := errgroup.WithContext(ctx)
		per := n / conns
		for i := range conns {
			first, cnt := 1+i*per, per
			if i == conns-1 {
				cnt = n - i*per
			}
			g.Go(func() error {
				gc, err := me.conn(gctx, "bench")
				if err != nil {
					return err
				}
				defer gc.Close()
				_, err = gc.Execute(fmt.Sprintf("CALL bench.gen_b(%d, %d)", first, cnt))
				return err
			})
		}
		genDone := make(chan error, 1)
		go func() { genDone <- g.Wait() }()
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case err := <-genDone:
				return err
			case <-tick.C:
				// Every generated transaction takes one GTID.
				if p, err := masterStatus(mon); err == nil && seq0 >= 0 {
					done := gtidSeq(p.GTID) - seq0
					b.logf("M-B: ~%d/%d transactions committed (%.0f tx/s)", done, n, float64(done)/time.Since(t0).Seconds())
				}
			}
		}
	})
	if err != nil {
		res.err = err
		return res
	}
	if s0, s1 := gtidSeq(res.before.GTID), gtidSeq(res.after.GTID); s0 >= 0 && s1 >= 0 && s1-s0 != int64(n) {
		b.logf("M-B: %d GTIDs in the range, %d transactions generated", s1-s0, n)
	}
	prof := ""
	if b.o.cpuProfile != "" {
		prof = b.o.cpuProfile + ".mysql.single"
	}
	b.measureMySQL(ctx, me, &res, "mb", "M-B", "bench.m_b", prof)
	return res
}

// measureMySQL times mariadb-binlog and Tideline on the workload's binlog
// range, alternating, for -rounds rounds, and keeps the fastest of each;
// go-mysql's raw and parsed reads are timed once, in the first round.
func (b *bench) measureMySQL(ctx context.Context, me *mysqlEnv, res *mysqlThroughput, w, label, table, profile string) {
	for r := 1; r <= b.o.rounds && ctx.Err() == nil; r++ {
		rl := label
		if b.o.rounds > 1 {
			rl = fmt.Sprintf("%s round %d/%d", label, r, b.o.rounds)
		}
		res.recvRuns = append(res.recvRuns, b.runMariadbBinlog(ctx, me, rl, res.before, res.after, res.files))
		if ctx.Err() != nil {
			break
		}
		if r == 1 {
			res.decoded = b.runMariadbBinlog(ctx, me, rl+" decoded", res.before, res.after, res.files, "--verbose", "--base64-output=decode-rows")
			res.goRaw, _ = b.readBinlogGo(ctx, me, rl, res.before, res.after, true)
			var rows int
			res.goParsed, rows = b.readBinlogGo(ctx, me, rl, res.before, res.after, false)
			res.goRows = rows
			if res.goParsed.err == nil && rows != res.events {
				res.goParsed.note = fmt.Sprintf("%d rows in the range, %d expected", rows, res.events)
				b.logf("%s: %s", rl, res.goParsed.note)
			}
		}
		prof := ""
		if r == 1 {
			prof = profile
		}
		name := "bench_" + w + round(r)
		cfg, err := b.mysqlConfig(me, name, table)
		if err == nil {
			err = b.storeStart(ctx, cfg, res.before)
		}
		if err != nil {
			res.tlRuns = append(res.tlRuns, measure{err: err})
		} else {
			res.tlRuns = append(res.tlRuns, b.runTideline(ctx, tlRun{label: rl, name: name, table: table, events: res.events, profile: prof, cfg: cfg}))
		}
		b.deleteTopics(name + ".")
	}
	res.recv, res.tl = fastest(res.recvRuns), fastest(res.tlRuns)
}

// mysqlConfig returns a validated config streaming table from MariaDB with
// no snapshot, to the bench's broker.
func (b *bench) mysqlConfig(me *mysqlEnv, name, table string) (*config.Config, error) {
	c := &config.Config{
		Name: name,
		Source: config.Source{
			Type: "mysql", DSN: config.Secret(fmt.Sprintf("mysql://root@%s/bench", me.addr)), Tables: []string{table},
			Snapshot: "never", StatusInterval: 100 * time.Millisecond,
		},
		Kafka: config.Kafka{Brokers: b.brokers, Compression: b.o.compress},
		HTTP:  config.HTTP{Listen: "off"},
		Log:   config.Log{Level: "warn", Format: "console"},
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// storeStart writes pos as the pipeline's stored binlog position, in its
// offsets topic, so that Tideline starts there: with snapshot never and no
// stored position it would start at the current end of the binlog.
func (b *bench) storeStart(ctx context.Context, cfg *config.Config, pos binlogPos) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	prefix := cfg.Kafka.TopicPrefix
	store := kafka.NewStore(cl, kafka.NewTopics(cl, cfg.Kafka.Topics, nil), prefix+".offsets")
	raw, _ := json.Marshal(pos)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := store.Save(sctx, "mysql/"+prefix+"/position", raw); err != nil {
		return fmt.Errorf("store the start position: %w", err)
	}
	return nil
}

// runMariadbBinlog times mariadb-binlog reading the range from the server,
// its output (SQL text, row events as base64 BINLOG statements) thrown away.
func (b *bench) runMariadbBinlog(ctx context.Context, me *mysqlEnv, label string, from, to binlogPos, files []string, extra ...string) measure {
	args := []string{
		"--no-defaults", "--read-from-remote-server", "--protocol=TCP", "--host=127.0.0.1",
		"--port=" + strconv.Itoa(me.port), "--user=root",
		"--start-position=" + strconv.FormatUint(uint64(from.Pos), 10),
		"--stop-position=" + strconv.FormatUint(uint64(to.Pos), 10),
	}
	args = append(args, extra...)
	args = append(args, files...)
	took, err := b.timeCommand(ctx, label, me.binlog, "mariadb-binlog", args)
	if err != nil {
		return measure{err: err}
	}
	m := measure{took: took}
	b.logf("%s: mariadb-binlog read %s:%d .. %s:%d in %s%s", label, from.File, from.Pos, to.File, to.Pos, took.Round(time.Millisecond), prefixed(m.note))
	return m
}

// readBinlogGo times go-mysql's BinlogSyncer reading from from to to: with
// raw set it does not decode events (RawModeEnabled), else it decodes rows
// as Tideline's source does. It returns the rows it saw (0 when raw).
func (b *bench) readBinlogGo(ctx context.Context, me *mysqlEnv, label string, from, to binlogPos, raw bool) (measure, int) {
	mode := "parsed"
	serverID := uint32(4_000_001)
	if raw {
		mode, serverID = "raw", 4_000_002
	}
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID:                serverID,
		Flavor:                  gmysql.MariaDBFlavor,
		Host:                    "127.0.0.1",
		Port:                    uint16(me.port),
		User:                    "root",
		RawModeEnabled:          raw,
		UseDecimal:              true,
		TimestampStringLocation: time.UTC,
		MaxReconnectAttempts:    1,
		Logger:                  slog.New(slog.DiscardHandler),
	})
	defer syncer.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	streamer, err := syncer.StartSync(gmysql.Position{Name: from.File, Pos: from.Pos})
	if err != nil {
		return measure{err: fmt.Errorf("go-mysql %s: start sync: %w", mode, err)}, 0
	}
	file, rows, events := from.File, 0, 0
	for {
		ev, err := streamer.GetEvent(rctx)
		if err != nil {
			return measure{err: fmt.Errorf("go-mysql %s: after %d events: %w", mode, events, err)}, rows
		}
		events++
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			// The next events are in this file; the rotate's own
			// position is in the previous one.
			file = string(e.NextLogName)
			continue
		case *replication.RowsEvent:
			rows += len(e.Rows)
		}
		if file == to.File && ev.Header.LogPos >= to.Pos {
			break
		}
	}
	took := time.Since(start)
	b.logf("%s: go-mysql BinlogSyncer (%s) read %d events to %s:%d in %s", label, mode, events, to.File, to.Pos, took.Round(time.Millisecond))
	return measure{took: took}, rows
}
