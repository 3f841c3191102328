// Package mysql captures changes from MySQL and MariaDB binlogs (ROW
// format) through go-mysql's replication package.
//
// The checkpoint is a binlog position (file and offset, with the GTID set
// when the server has one) kept in the pipeline's offsets topic: it moves
// only to the end of a transaction whose events, and every event before
// them, Kafka acknowledged (the pipeline calls Commit, a saver goroutine
// stores the newest one).
package mysql

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/checkpoint"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// Config is what the source needs from the pipeline's config.
type Config struct {
	Name           string // pipeline name (envelope source.name)
	DSN            string // mysql://user:pass@host:port/db
	Tables         []string
	Snapshot       string // initial | never
	ServerID       uint32
	TopicPrefix    string
	Tombstones     bool
	StatusInterval time.Duration // how often the position is stored
	BatchRecords   int
	BatchBytes     int
	Linger         time.Duration
	Version        string
}

// Gauges the source keeps up to date; any may be nil.
type Gauges struct {
	// LagBytes is the binlog bytes between the committed position (the
	// newest one delivered to Kafka, see lagger) and the server's current
	// position.
	LagBytes  prometheus.Gauge
	Connected prometheus.Gauge
}

// Source is a MySQL/MariaDB binlog source.
type Source struct {
	cfg    Config
	store  checkpoint.Store
	log    *zap.Logger
	gauges Gauges

	// committed is the newest delivered position (JSON), set by Commit
	// from producer goroutines and stored by the saver.
	committed atomic.Pointer[change.Position]
	// stored is the position a restart resumes at or after: the one last
	// stored in the offsets topic (by Run at start, then by the saver).
	// The stream prunes the schema history against it, never against
	// committed, which a crash can lose.
	stored    atomic.Pointer[position]
	streaming atomic.Bool
	connected atomic.Bool
}

var _ capture.Source = (*Source)(nil)

// New returns a source; store keeps its position.
func New(cfg Config, store checkpoint.Store, log *zap.Logger, g Gauges) *Source {
	return &Source{cfg: cfg, store: store, log: log, gauges: g}
}

// Commit implements capture.Source.
func (s *Source) Commit(pos change.Position) { s.committed.Store(&pos) }

// Streaming reports whether the source is reading the binlog.
func (s *Source) Streaming() bool { return s.streaming.Load() }

// position is a binlog position at a transaction boundary.
type position struct {
	File string `json:"file"`
	Pos  uint32 `json:"pos"`
	// GTID is the server's executed GTID set at this point, when it has
	// one (MariaDB domain-server-seq or MySQL uuid:interval form).
	GTID string `json:"gtid,omitempty"`
	// Snapshot marks the position the initial snapshot handed off at.
	Snapshot bool `json:"snapshot,omitempty"`
}

func (p position) encode() change.Position {
	b, _ := json.Marshal(p)
	return change.Position(b)
}

func (s *Source) positionKey() string { return "mysql/" + s.cfg.Name + "/position" }

// endpoint is the parsed DSN.
type endpoint struct {
	addr, user, password, db string
	host                     string
	port                     uint16
	tls                      *tls.Config // nil: plain TCP
}

// parseDSN reads mysql://user:pass@host:port/db[?tls=…&tls_ca=…]. tls is
// true (verify the server's certificate against the system roots, or
// tls_ca), skip-verify (encrypt without verifying), or false (the default);
// tls_cert and tls_key add a client certificate.
func parseDSN(dsn string) (endpoint, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme != "mysql" {
		return endpoint{}, fmt.Errorf("source.dsn: want mysql://user:pass@host:port/db")
	}
	e := endpoint{user: u.User.Username(), db: strings.Trim(u.Path, "/"), host: u.Hostname()}
	e.password, _ = u.User.Password()
	port := u.Port()
	if port == "" {
		port = "3306"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return endpoint{}, fmt.Errorf("source.dsn: bad port %q", port)
	}
	e.port = uint16(p)
	e.addr = net.JoinHostPort(e.host, port)
	if e.tls, err = config.MySQLTLS(u.Query(), e.host); err != nil {
		return endpoint{}, fmt.Errorf("source.dsn: %w", err)
	}
	return e, nil
}

func (s *Source) connect(ctx context.Context, ep endpoint) (*client.Conn, error) {
	var opts []client.Option
	if ep.tls != nil {
		opts = append(opts, func(c *client.Conn) error { c.SetTLSConfig(ep.tls); return nil })
	}
	conn, err := client.ConnectWithContext(ctx, ep.addr, ep.user, ep.password, "", 10*time.Second, opts...)
	if err != nil {
		err = fmt.Errorf("connect to MySQL at %s: %w", config.Redact(s.cfg.DSN), err)
		if !s.connected.Load() {
			return nil, capture.Fatal(err)
		}
		return nil, err
	}
	s.connected.Store(true)
	// Snapshot values must read like the binlog's: TIMESTAMPs in UTC,
	// text in UTF-8. (SET NAMES explicitly: a server that does not know
	// the collation the client announces falls back to its default.)
	for _, q := range []string{"SET time_zone = '+00:00'", "SET NAMES utf8mb4"} {
		if _, err := conn.Execute(q); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	return conn, nil
}

// Run implements capture.Source.
func (s *Source) Run(ctx context.Context, h capture.Handler) error {
	ep, err := parseDSN(s.cfg.DSN)
	if err != nil {
		return capture.Fatal(err)
	}
	conn, err := s.connect(ctx, ep)
	if err != nil {
		return err
	}
	defer conn.Close()
	flavor, err := checkServer(conn, s.cfg.ServerID)
	if err != nil {
		return err
	}
	self := reportHost(s.cfg.Name)
	if err := checkReplicaID(ctx, conn, s.cfg.ServerID, self, min(10*time.Second, max(2*time.Second, 10*s.cfg.StatusInterval))); err != nil {
		return err
	}
	match := newMatcher(s.cfg.Tables)
	hist, err := s.loadHistory(ctx)
	if err != nil {
		return err
	}
	var start position
	raw, err := s.store.Load(ctx, s.positionKey())
	if err != nil {
		return fmt.Errorf("load binlog position: %w", err)
	}
	var tables []string
	switch {
	case raw != nil:
		if err := json.Unmarshal(raw, &start); err != nil {
			return capture.Fatal(fmt.Errorf("stored position %s is corrupt: %w", s.positionKey(), err))
		}
		// Tables the history knows at the start position are captured
		// even if they no longer exist: their rows before the DROP are
		// still to be read.
		if tables, err = resolveTables(conn, s.cfg.Tables, match.filter(hist.alive(start.File, start.Pos))); err != nil {
			return err
		}
	case s.cfg.Snapshot == "initial":
		if tables, err = resolveTables(conn, s.cfg.Tables, nil); err != nil {
			return err
		}
		var shapes map[string]*table
		if start, shapes, err = s.snapshot(ctx, ep, h, tables); err != nil {
			return fmt.Errorf("initial snapshot: %w", err)
		}
		// A new snapshot starts a new history: the shapes read under its
		// lock, stored before the position that needs them.
		hist = &history{}
		for _, name := range tables {
			hist.record(entryOf(shapes[name], start.File, start.Pos))
		}
		if err := s.saveHistory(ctx, hist); err != nil {
			return err
		}
		if err := s.store.Save(ctx, s.positionKey(), []byte(start.encode())); err != nil {
			return fmt.Errorf("store the snapshot's position: %w", err)
		}
	default:
		// No snapshot: read the position first, then the shapes, so that
		// a DDL in between is replayed from the binlog (and applying it to
		// a shape that already has it changes nothing).
		if start, err = masterStatus(conn, flavor); err != nil {
			return err
		}
		if tables, err = resolveTables(conn, s.cfg.Tables, nil); err != nil {
			return err
		}
	}
	// start is stored, or (no snapshot, first start) a restart would read
	// a newer position from the server.
	s.stored.Store(&start)
	schemas, err := s.shapesAt(conn, hist, tables, start)
	if err != nil {
		return err
	}
	hist.prune(start)
	// (Saved only when changed: after a snapshot it was just saved.)
	if err := s.saveHistory(ctx, hist); err != nil {
		return err
	}
	tracker := &ddlTracker{p: parser.New(), prefix: s.cfg.TopicPrefix, match: match.match,
		dbCharset: func(db string) (string, error) { return dbCharset(conn, db) }}

	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID:                s.cfg.ServerID,
		Flavor:                  flavor,
		Host:                    ep.host,
		Port:                    ep.port,
		User:                    ep.user,
		Password:                ep.password,
		TLSConfig:               ep.tls,
		UseDecimal:              true,
		TimestampStringLocation: time.UTC,
		HeartbeatPeriod:         min(s.cfg.StatusInterval, 10*time.Second),
		ReadTimeout:             time.Minute,
		MaxReconnectAttempts:    1,
		// go-mysql buffers decoded events ahead of the stream; keep that
		// small so memory stays bounded by capture.max_inflight_bytes.
		EventCacheCount: 256,
		// go-mysql logs every connect and rotation at info; keep its
		// warnings and errors, on stderr like the rest of the logs.
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		// Registered under a host this pipeline recognises: a stale
		// registration of its own is no server_id conflict
		// (checkReplicaID). Without it go-mysql sends os.Hostname().
		Localhost: self,
	})
	defer syncer.Close()
	// With GTIDs the position survives a failover to another server of
	// the replication group; file and offset name one server's binlog.
	var streamer *replication.BinlogStreamer
	if start.GTID != "" {
		gset, perr := gmysql.ParseGTIDSet(flavor, start.GTID)
		if perr != nil {
			return capture.Fatal(fmt.Errorf("stored GTID set %q: %w", start.GTID, perr))
		}
		streamer, err = syncer.StartSyncGTID(gset)
	} else {
		streamer, err = syncer.StartSync(gmysql.Position{Name: start.File, Pos: start.Pos})
	}
	if err != nil {
		return fmt.Errorf("start binlog dump at %s:%d (gtid %q): %w", start.File, start.Pos, start.GTID, err)
	}
	s.streaming.Store(true)
	defer s.streaming.Store(false)
	s.log.Info("streaming binlog", zap.String("file", start.File), zap.Uint32("pos", start.Pos), zap.String("gtid", start.GTID), zap.Int("tables", len(tables)))

	g, gctx := errgroup.WithContext(ctx)
	saved := change.Position(start.encode())
	g.Go(func() error { return s.saver(gctx, saved) }) // the saver has its own copy
	if s.gauges.LagBytes != nil {
		g.Go(func() error { s.lagger(gctx, ep); return nil })
	}
	if s.gauges.Connected != nil {
		s.gauges.Connected.Set(1)
		defer s.gauges.Connected.Set(0)
	}
	st := &stream{s: s, h: h, tables: schemas, hist: hist, ddl: tracker, conn: conn, enc: codec.NewEncoder(s.cfg.Version),
		batch: &change.Batch{}, file: start.File, gtid: start.GTID}
	g.Go(func() error { return st.run(gctx, streamer) })
	err = g.Wait()
	if ctx.Err() != nil {
		// Stopping, with the saver gone: hand over what was read, wait
		// for Kafka, and store the final position.
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := st.flush(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		if err := h.Drain(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		if err := s.saveCommitted(sctx, &saved); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return nil
	}
	return err
}

// saver stores the newest committed position every status interval.
func (s *Source) saver(ctx context.Context, saved change.Position) error {
	t := time.NewTicker(s.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.saveCommitted(ctx, &saved); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// lagger sets the lag gauge every status interval: the binlog bytes from
// the committed position (the end of the newest transaction Kafka
// acknowledged with everything before it, as set by Commit; the stored
// position trails it by up to a status interval) to the server's end,
// over every binlog file in between (SHOW BINARY LOGS). Until a position
// is committed the gauge is left as it was. It has its own connection,
// opened again at the next tick after a connection error; a server error
// (no privilege for SHOW BINARY LOGS, say) would come back every time, so
// it is logged once and the lagger stops, leaving the gauge as it was.
func (s *Source) lagger(ctx context.Context, ep endpoint) {
	t := time.NewTicker(s.cfg.StatusInterval)
	defer t.Stop()
	var conn *client.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p := s.committed.Load()
		if p == nil {
			continue
		}
		var pos position
		if json.Unmarshal([]byte(*p), &pos) != nil {
			continue
		}
		if conn == nil {
			c, err := s.connect(ctx, ep)
			if err != nil {
				continue
			}
			conn = c
		}
		r, err := conn.Execute("SHOW BINARY LOGS")
		if err != nil {
			var me *gmysql.MyError
			if errors.As(err, &me) {
				s.log.Warn("the binlog lag gauge (tideline_source_lag_bytes) is not updated: SHOW BINARY LOGS failed (it needs REPLICATION CLIENT, or BINLOG MONITOR on MariaDB)", zap.Error(err))
				return
			}
			conn.Close()
			conn = nil
			continue
		}
		var lag int64
		for i := range r.Values {
			name, _ := r.GetString(i, 0)
			size, _ := r.GetInt(i, 1)
			switch {
			case name == pos.File:
				lag += max(size-int64(pos.Pos), 0)
			case before(pos.File, pos.Pos, name, 0):
				lag += size
			}
		}
		s.gauges.LagBytes.Set(float64(lag))
	}
}

func (s *Source) saveCommitted(ctx context.Context, saved *change.Position) error {
	p := s.committed.Load()
	if p == nil || *p == *saved {
		return nil
	}
	if err := s.store.Save(ctx, s.positionKey(), []byte(*p)); err != nil {
		return fmt.Errorf("store binlog position: %w", err)
	}
	*saved = *p
	var pos position
	if err := json.Unmarshal([]byte(*p), &pos); err == nil {
		s.stored.Store(&pos)
	}
	return nil
}

// stream turns binlog events into batches.
type stream struct {
	s      *Source
	h      capture.Handler
	tables map[string]*table // "db.table"
	hist   *history
	ddl    *ddlTracker
	conn   *client.Conn
	enc    *codec.Encoder
	batch  *change.Batch

	file     string
	gtid     string
	inTx     bool
	txOrder  int64
	txName   string // transaction.id: the GTID, or file:pos of its start
	txGTID   string
	txGen    uint64
	thread   int64
	serverID uint32
	ts       int64 // event timestamp, ms
	lastHand time.Time

	waitCancel context.CancelFunc
	pending    pendingPos

	ev      change.Event
	before  []change.Value
	after   []change.Value
	scratch []byte
}

func (st *stream) run(ctx context.Context, streamer *replication.BinlogStreamer) error {
	tick := st.s.cfg.Linger
	if tick <= 0 {
		tick = time.Millisecond
	}
	// One deadline per tick, not per event: when it passes, what the
	// stream holds outside a transaction is handed over, so a quiet
	// stream's last transaction waits at most a tick.
	wctx := st.renewWait(ctx, tick)
	defer st.stopWait()
	for {
		ev, err := streamer.GetEvent(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				wctx = st.renewWait(ctx, tick)
				if !st.inTx && (len(st.batch.Records) > 0 || (st.pending.set && time.Since(st.lastHand) > time.Second)) {
					if err := st.flush(ctx); err != nil {
						return err
					}
				}
				continue
			}
			if isPurged(err) {
				return capture.Fatal(fmt.Errorf("the server no longer has the binlog at the stored position (purged): %w. "+
					"Changes since then are lost to Tideline; to start over with a new snapshot, delete the key %q from the offsets topic (produce a null value for it)",
					err, st.s.positionKey()))
			}
			return fmt.Errorf("read binlog: %w", err)
		}
		if err := st.event(ctx, ev); err != nil {
			return err
		}
	}
}

// renewWait replaces the wait deadline with one tick from now.
func (st *stream) renewWait(ctx context.Context, tick time.Duration) context.Context {
	st.stopWait()
	wctx, cancel := context.WithTimeout(ctx, tick)
	st.waitCancel = cancel
	return wctx
}

func (st *stream) stopWait() {
	if st.waitCancel != nil {
		st.waitCancel()
	}
}

func (st *stream) event(ctx context.Context, ev *replication.BinlogEvent) error {
	st.ts = int64(ev.Header.Timestamp) * 1000
	st.serverID = ev.Header.ServerID
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		// Also the fake rotation that starts every dump: it names the
		// file the server reads from.
		next := string(e.NextLogName)
		if codec.BinlogSeq(next) < codec.BinlogSeq(st.file) {
			return capture.Fatal(fmt.Errorf("the binlog went back from %s to %s (a failover to another server, or RESET MASTER): "+
				"Tideline orders changes by binlog file number and position, and so do the sinks, which keep a row only when its position is after the one they hold: "+
				"every change from here on would be dropped by the sinks without a word. To recover, take a new snapshot (delete the key %q from the offsets topic: produce a null value for it) "+
				"and reset the sinks' targets (empty or recreate the tables they write), then start Tideline again",
				st.file, next, st.s.positionKey()))
		}
		st.file = next
	case *replication.MariadbGTIDEvent: // MariaDB starts a transaction here
		st.begin(ev.Header, e.GTID.String())
	case *replication.GTIDEvent: // MySQL: the GTID, then BEGIN
		gtid := ""
		if g, err := e.GTIDNext(); err == nil {
			gtid = g.String()
		}
		st.begin(ev.Header, gtid)
	case *replication.QueryEvent:
		q := strings.TrimSpace(string(e.Query))
		switch strings.ToUpper(q) {
		case "BEGIN":
			if !st.inTx {
				st.begin(ev.Header, "")
			}
			st.thread = int64(e.SlaveProxyID)
			return nil
		case "COMMIT": // a transaction on a non-transactional engine
			return st.commit(ctx, ev.Header.LogPos, e.GSet)
		}
		// Any other statement: DDL that may change the captured tables,
		// checkpointed after it (a DDL statement is its own transaction).
		if err := st.query(ctx, ev.Header, e, q); err != nil {
			return err
		}
		return st.commit(ctx, ev.Header.LogPos, e.GSet)
	case *replication.XIDEvent:
		return st.commit(ctx, ev.Header.LogPos, e.GSet)
	case *replication.RowsEvent:
		return st.rows(ctx, ev.Header, e)
	}
	return nil
}

// isPurged reports the server's "could not find first log" (1236) answer
// to a dump from a position it no longer has.
func isPurged(err error) bool {
	var me *gmysql.MyError
	if errors.As(err, &me) && me.Code == gmysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "1236") || strings.Contains(s, "Could not find first log file") || strings.Contains(s, "purged")
}

// begin starts a transaction at the event with header h.
func (st *stream) begin(h *replication.EventHeader, gtid string) {
	st.inTx, st.txOrder, st.thread = true, 0, 0
	st.txGen++
	st.txGTID = gtid
	st.txName = gtid
	if gtid == "" {
		st.txName = st.file + ":" + strconv.FormatUint(uint64(h.LogPos-h.EventSize), 10)
	}
	if st.batch.CommitMicros == 0 {
		st.batch.CommitMicros = int64(h.Timestamp) * 1e6
	}
}

func (st *stream) commit(ctx context.Context, logPos uint32, gset gmysql.GTIDSet) error {
	st.inTx = false
	// Only the newest transaction end of a batch becomes its checkpoint:
	// keep it as it is and render it once, when the batch is handed over,
	// not once per transaction.
	st.pending = pendingPos{file: st.file, pos: logPos, gset: gset, set: true}
	if len(st.batch.Records) >= st.s.cfg.BatchRecords || st.batch.Bytes >= st.s.cfg.BatchBytes {
		return st.flush(ctx)
	}
	return nil
}

func (st *stream) flush(ctx context.Context) error {
	b := st.batch
	if len(b.Records) == 0 && !st.pending.set {
		return nil
	}
	if st.pending.set {
		p := position{File: st.pending.file, Pos: st.pending.pos}
		if st.pending.gset != nil {
			p.GTID = st.pending.gset.String()
		}
		b.Checkpoint = p.encode()
	}
	if err := st.h.Handle(ctx, b); err != nil {
		return err
	}
	b.Reset()
	st.pending = pendingPos{}
	st.lastHand = time.Now()
	return nil
}

// pendingPos is the latest transaction end read and not yet handed over.
type pendingPos struct {
	file string
	pos  uint32
	gset gmysql.GTIDSet
	set  bool
}

func (st *stream) rows(ctx context.Context, hdr *replication.EventHeader, e *replication.RowsEvent) error {
	et := hdr.EventType
	tab, ok := st.tables[string(e.Table.Schema)+"."+string(e.Table.Table)]
	if !ok {
		return nil
	}
	var op change.Op
	step := 1
	switch et {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2:
		op = change.OpCreate
	case replication.UPDATE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv2, replication.PARTIAL_UPDATE_ROWS_EVENT:
		op, step = change.OpUpdate, 2
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2:
		op = change.OpDelete
	default:
		return nil
	}
	for i := 0; i+step-1 < len(e.Rows); i += step {
		st.scratch = st.scratch[:0]
		var before, after []change.Value
		var err error
		switch op {
		case change.OpCreate:
			after, err = st.values(st.after, tab, e.Rows[i])
			st.after = after
		case change.OpDelete:
			before, err = st.values(st.before, tab, e.Rows[i])
			st.before = before
		case change.OpUpdate:
			if before, err = st.values(st.before, tab, e.Rows[i]); err == nil {
				st.before = before
				after, err = st.values(st.after, tab, e.Rows[i+1])
				st.after = after
			}
		}
		if err != nil {
			return err
		}
		st.txOrder++
		if tab.gen != st.txGen {
			tab.gen, tab.counter = st.txGen, 0
		}
		tab.counter++
		st.ev = change.Event{Op: op, Table: tab.t, Before: before, After: after, Source: change.Source{
			Connector: "mysql", Name: st.s.cfg.Name, TsMs: st.ts,
			ServerID: st.serverID, GTID: st.txGTID, File: st.file, Pos: uint64(hdr.LogPos - hdr.EventSize),
			Row: int32(i / step), Thread: st.thread,
		}, TxOrder: st.txOrder, TxTableOrder: tab.counter, TxName: st.txName}
		key := st.enc.Key(&st.ev)
		value, order := st.enc.ValueOrder(&st.ev, time.Now().UnixMilli())
		st.batch.Add(change.Record{Topic: tab.t.Topic, Key: key, Value: value, Order: order, Table: tab.t, Op: op})
		if op == change.OpDelete && st.s.cfg.Tombstones && key != nil {
			st.batch.Add(change.Record{Topic: tab.t.Topic, Key: key, Table: tab.t, Op: op})
		}
	}
	if len(st.batch.Records) >= st.s.cfg.BatchRecords || st.batch.Bytes >= st.s.cfg.BatchBytes {
		return st.flush(ctx)
	}
	return nil
}

// values renders a row image into dst (reused).
func (st *stream) values(dst []change.Value, tab *table, row []any) ([]change.Value, error) {
	if len(row) != len(tab.cols) {
		return nil, capture.Fatal(fmt.Errorf("table %s: binlog row has %d columns, the tracked shape %d: the schema history lost a DDL of this table (see the warnings about DDL not tracked by parsing); "+
			"to recover, take a new snapshot: delete the key %q from the offsets topic",
			tab.name, len(row), len(tab.cols), st.s.positionKey()))
	}
	dst = dst[:0]
	for i, v := range row {
		if v == nil {
			dst = append(dst, change.Value{})
			continue
		}
		start := len(st.scratch)
		var err error
		st.scratch, err = appendValue(st.scratch, &tab.cols[i], v, true)
		if err != nil {
			return nil, capture.Fatal(fmt.Errorf("table %s column %s (%s): cannot convert the value: %w", tab.name, tab.cols[i].name, tab.cols[i].colType, err))
		}
		dst = append(dst, change.Value{Kind: change.Present, JSON: st.scratch[start:len(st.scratch):len(st.scratch)]})
	}
	return dst, nil
}

// named returns the captured tables an unparsed statement (run with
// default database schema) may name. It errs on the side of too many: a
// reload of a table that did not change is harmless.
func (st *stream) named(schema, q string) []string {
	lq := strings.ToLower(q)
	var out []string
	for name := range st.tables {
		db, t, _ := strings.Cut(name, ".")
		if strings.Contains(lq, strings.ToLower(t)) && (schema == db || strings.Contains(lq, strings.ToLower(db))) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// tableDDL reports whether q's leading keywords make it a statement that
// can change a table's columns or existence: ALTER [ONLINE|OFFLINE]
// [IGNORE] TABLE, CREATE [OR REPLACE] [TEMPORARY] TABLE, RENAME TABLE,
// DROP [TEMPORARY] TABLE, DROP DATABASE/SCHEMA, TRUNCATE. Others that name
// a table (CREATE TRIGGER … ON t, CREATE PROCEDURE … FROM t) do not.
func tableDDL(q string) bool {
	w := leadingWords(q, 5)
	at := func(i int, words ...string) bool { return i < len(w) && slices.Contains(words, w[i]) }
	skip := func(i int, words ...string) int {
		for at(i, words...) {
			i++
		}
		return i
	}
	switch {
	case at(0, "ALTER"):
		return at(skip(1, "ONLINE", "OFFLINE", "IGNORE"), "TABLE")
	case at(0, "CREATE"):
		i := 1
		if at(1, "OR") && at(2, "REPLACE") {
			i = 3
		}
		return at(skip(i, "TEMPORARY"), "TABLE")
	case at(0, "RENAME"):
		return at(1, "TABLE", "TABLES")
	case at(0, "DROP"):
		return at(skip(1, "TEMPORARY"), "TABLE", "TABLES", "DATABASE", "SCHEMA")
	case at(0, "TRUNCATE"):
		return true
	}
	return false
}

// leadingWords returns up to n leading words of q, upper-cased, skipping
// comments (the contents of a /*!version … */ comment, which the server
// runs, count as words).
func leadingWords(q string, n int) []string {
	var out []string
	for len(out) < n && q != "" {
		switch {
		case strings.HasPrefix(q, "/*!"):
			q = strings.TrimLeft(q[3:], "0123456789")
		case strings.HasPrefix(q, "/*M!"):
			q = strings.TrimLeft(q[4:], "0123456789")
		case strings.HasPrefix(q, "/*"):
			end := strings.Index(q[2:], "*/")
			if end < 0 {
				return out
			}
			q = q[2+end+2:]
		case strings.HasPrefix(q, "*/"):
			q = q[2:]
		case strings.HasPrefix(q, "#") || strings.HasPrefix(q, "-- "):
			end := strings.IndexByte(q, '\n')
			if end < 0 {
				return out
			}
			q = q[end+1:]
		case isWordByte(q[0]):
			i := 1
			for i < len(q) && isWordByte(q[i]) {
				i++
			}
			out = append(out, strings.ToUpper(q[:i]))
			q = q[i:]
		case q[0] == ' ' || q[0] == '\t' || q[0] == '\n' || q[0] == '\r':
			q = q[1:]
		default:
			return out // punctuation: no more keywords
		}
	}
	return out
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// query applies a statement other than BEGIN/COMMIT: DDL changes the
// captured shapes (recorded in the schema history, durably, before any
// row after it is handed over), TRUNCATE becomes an op "t" event.
func (st *stream) query(ctx context.Context, hdr *replication.EventHeader, e *replication.QueryEvent, q string) error {
	logPos := hdr.LogPos
	next, effs, err := st.ddl.apply(st.tables, string(e.Schema), q)
	if err == nil {
		st.tables = next
	} else if effs, err = st.untracked(string(e.Schema), q, logPos, err); err != nil {
		return err
	}
	for _, ef := range effs {
		switch ef.kind {
		case effTruncated:
			tab := st.tables[ef.name]
			st.txOrder++
			st.ev = change.Event{Op: change.OpTruncate, Table: tab.t, Source: change.Source{
				Connector: "mysql", Name: st.s.cfg.Name, TsMs: st.ts, ServerID: st.serverID, GTID: st.txGTID,
				File: st.file, Pos: uint64(hdr.LogPos - hdr.EventSize), Thread: int64(e.SlaveProxyID),
			}, TxOrder: st.txOrder, TxTableOrder: 1, TxName: st.txName}
			value, order := st.enc.ValueOrder(&st.ev, time.Now().UnixMilli())
			st.batch.Add(change.Record{Topic: tab.t.Topic, Value: value, Order: order, Table: tab.t, Op: change.OpTruncate})
		case effAltered, effCreated:
			tab := st.tables[ef.name]
			st.s.log.Info("table shape changed", zap.String("table", ef.name), zap.Int("columns", len(tab.cols)),
				zap.Bool("created", ef.kind == effCreated), zap.String("file", st.file), zap.Uint32("pos", logPos))
			st.hist.record(entryOf(tab, st.file, logPos))
		case effGone:
			if ef.to != "" {
				st.s.log.Info("captured table renamed", zap.String("table", ef.name), zap.String("to", ef.to))
			} else {
				st.s.log.Info("captured table dropped", zap.String("table", ef.name))
			}
			st.hist.record(historyEntry{File: st.file, Pos: logPos, Table: ef.name, Dropped: true})
		}
	}
	if !st.hist.dirty {
		return nil
	}
	// Every save rewrites the whole history: keep it to what a restart
	// from the stored position (or later) can need.
	if p := st.s.stored.Load(); p != nil {
		st.hist.prune(*p)
	}
	return st.s.saveHistory(ctx, st.hist)
}

// untracked handles a statement at logPos that the tracker could not
// follow (cause): the shapes of the captured tables it may have changed
// are read again, from the schema history when it has them at exactly
// this position (a replay: what was read from the server the first time,
// when it was current), else from the server. That is exact only while no
// later DDL changed them, so it says so. It changes st.tables in place
// (the tracker left them as they were before the statement) and returns
// what it did.
func (st *stream) untracked(schema, q string, logPos uint32, cause error) ([]effect, error) {
	var names []string
	var parsed errUntracked
	if errors.As(cause, &parsed) {
		names = parsed.tables // exact: from the parsed statement
	} else {
		if !tableDDL(q) {
			return nil, nil // changes no table's columns (GRANT, CREATE TRIGGER …)
		}
		if names = st.named(schema, q); len(names) == 0 {
			return nil, nil // not about a captured table
		}
	}
	var effs []effect
	var fromServer, fromHistory []string
	for _, name := range names {
		_, tracked := st.tables[name]
		kind := effAltered
		if !tracked {
			kind = effCreated
		}
		if h, ok := st.hist.exact(name, st.file, logPos); ok {
			fromHistory = append(fromHistory, name)
			switch {
			case h.Dropped && tracked:
				delete(st.tables, name)
				effs = append(effs, effect{kind: effGone, name: name})
			case !h.Dropped:
				st.tables[name] = tableOf(h, st.s.cfg.TopicPrefix)
				effs = append(effs, effect{kind: kind, name: name})
			}
			continue
		}
		fromServer = append(fromServer, name)
		fresh, err := loadTable(st.conn, name, st.s.cfg.TopicPrefix)
		var missing errMissing
		switch {
		case errors.As(err, &missing) && tracked:
			delete(st.tables, name)
			effs = append(effs, effect{kind: effGone, name: name})
		case errors.As(err, &missing):
			st.s.log.Warn("a table the statement brings into the capture no longer exists on the server: its rows are not captured until it is created again",
				zap.String("table", name))
		case err != nil:
			return nil, err
		default:
			st.tables[name] = fresh
			effs = append(effs, effect{kind: kind, name: name})
		}
	}
	st.s.log.Warn("DDL not tracked by parsing; the table shapes were read from the server instead (exact unless a later DDL changed them), or on a replay from the schema history, which holds what was read the first time",
		zap.Error(cause), zap.Strings("from_server", fromServer), zap.Strings("from_history", fromHistory))
	return effs, nil
}
