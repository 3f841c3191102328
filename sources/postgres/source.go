// Package postgres captures changes from PostgreSQL with logical replication
// (the pgoutput plugin, protocol version 1) through jackc/pglogrepl.
//
// The slot is the checkpoint: its confirmed flush position moves only to the
// end of a transaction whose events, and every event before them, Kafka
// acknowledged (the pipeline calls Commit), or, when nothing is in flight,
// to the position a server keepalive reports.
package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/checkpoint"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// Config is what the source needs from the pipeline's config.
type Config struct {
	Name           string // pipeline name (envelope source.name)
	DSN            string
	Tables         []string
	Snapshot       string // initial | never
	Slot           string
	Publication    string
	TopicPrefix    string
	Tombstones     bool
	StatusInterval time.Duration
	BatchRecords   int
	BatchBytes     int
	// Linger is how long a batch waits for more transactions once the
	// stream has nothing more to read (0 hands it over at once).
	Linger  time.Duration
	Version string // Tideline's version, for source.version
}

// Gauges the source keeps up to date; any may be nil.
type Gauges struct {
	LagBytes     prometheus.Gauge
	ConfirmedLSN prometheus.Gauge
	Connected    prometheus.Gauge
	SnapshotRows func(table string) prometheus.Counter
}

// Source is a PostgreSQL logical replication source.
type Source struct {
	cfg    Config
	store  checkpoint.Store
	log    *zap.Logger
	gauges Gauges

	// committed is the newest delivered checkpoint (an LSN), written by
	// Commit from producer goroutines and read by the Run loop, which
	// confirms it to the server.
	committed atomic.Uint64
	// streaming is true while a replication session is open.
	streaming atomic.Bool
	// connected is set once the source has reached the database.
	connected atomic.Bool
}

// Streaming reports whether the source is streaming changes (the snapshot,
// if any, is done and the replication session is open).
func (s *Source) Streaming() bool { return s.streaming.Load() }

var _ capture.Source = (*Source)(nil)

// New returns a source. store keeps whether the initial snapshot finished.
func New(cfg Config, store checkpoint.Store, log *zap.Logger, g Gauges) *Source {
	return &Source{cfg: cfg, store: store, log: log, gauges: g}
}

// Commit implements capture.Source.
func (s *Source) Commit(pos change.Position) {
	lsn, err := parsePosition(pos)
	if err != nil {
		// Positions come only from this source; a bad one is a bug.
		panic(fmt.Sprintf("postgres: commit of foreign position %q", pos))
	}
	for {
		cur := s.committed.Load()
		if uint64(lsn) <= cur || s.committed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// position renders an LSN as PostgreSQL prints it ("16/B374D848"),
// without fmt: it runs once per transaction.
func position(lsn pglogrepl.LSN) change.Position {
	var b [17]byte
	out := strconv.AppendUint(b[:0], uint64(lsn)>>32, 16)
	out = append(out, '/')
	out = strconv.AppendUint(out, uint64(lsn)&0xffffffff, 16)
	return change.Position(bytes.ToUpper(out))
}

// parsePosition reverses position.
func parsePosition(p change.Position) (pglogrepl.LSN, error) {
	hi, lo, ok := strings.Cut(string(p), "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("postgres: %q is not an LSN", p)
	}
	return pglogrepl.LSN(h<<32 | l), nil
}

// snapshotState is stored under snapshotKey once the initial snapshot of a
// slot is delivered.
type snapshotState struct {
	Slot      string   `json:"slot"`
	Completed bool     `json:"completed"`
	LSN       string   `json:"lsn"`
	Tables    []string `json:"tables"`
}

// checkAfterSnapshot refuses to stream when doing so would silently miss
// rows: the slot the snapshot handed off to is gone, or tables were added
// to source.tables after the snapshot (their existing rows were never read).
func (s *Source) checkAfterSnapshot(st *snapshotState, slot slotState, tables []tableRef) error {
	key := s.snapshotKey()
	if !slot.exists {
		return capture.Fatal(fmt.Errorf("replication slot %s is gone although its snapshot completed (at %s): the changes since its last confirmed position are lost to it. "+
			"To start over with a new snapshot, delete the key %q from the offsets topic (produce a null value for it) or use a new name/source.slot", s.cfg.Slot, st.LSN, key))
	}
	had := map[string]bool{}
	for _, t := range st.Tables {
		had[t] = true
	}
	var added []string
	for _, t := range tables {
		if !had[t.String()] {
			added = append(added, t.String())
		}
	}
	if len(added) > 0 {
		return capture.Fatal(fmt.Errorf("tables %s were added to source.tables after the initial snapshot, so their existing rows were never read. "+
			"Either take a new snapshot of everything (delete the key %q from the offsets topic), or capture them from now on only with a separate pipeline using snapshot: never", strings.Join(added, ", "), key))
	}
	return nil
}

func (s *Source) snapshotKey() string { return "postgres/" + s.cfg.Name + "/snapshot" }

// Run implements capture.Source.
func (s *Source) Run(ctx context.Context, h capture.Handler) error {
	conn, err := connect(ctx, s.cfg.DSN)
	if err != nil {
		if !s.connected.Load() {
			// Unreachable at start: most likely a wrong DSN, so say so
			// and stop, instead of retrying in silence. A connection lost
			// later is retried by the pipeline.
			return capture.Fatal(err)
		}
		return err
	}
	s.connected.Store(true)
	defer conn.Close(context.Background())
	if err := checkServer(ctx, conn); err != nil {
		return err
	}
	tables, err := resolveTables(ctx, conn, s.cfg.Tables)
	if err != nil {
		return err
	}
	if err := ensurePublication(ctx, conn, s.cfg.Publication, tables); err != nil {
		return err
	}
	slot, err := readSlot(ctx, conn, s.cfg.Slot)
	if err != nil {
		return err
	}
	if err := slot.usable(s.cfg.Slot, conn.Config().Database); err != nil {
		return err
	}

	needSnapshot := false
	if s.cfg.Snapshot == "initial" {
		st, err := s.loadSnapshotState(ctx)
		if err != nil {
			return err
		}
		needSnapshot = st == nil || !st.Completed || st.Slot != s.cfg.Slot
		if !needSnapshot {
			if err := s.checkAfterSnapshot(st, slot, tables); err != nil {
				return err
			}
		}
		if needSnapshot && slot.exists {
			// A slot without a finished snapshot is from a run that
			// stopped mid-snapshot: start over with a new slot and a new
			// exported snapshot, so the handoff stays exact.
			s.log.Info("initial snapshot did not finish; dropping the slot to take it again", zap.String("slot", s.cfg.Slot))
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.cfg.Slot); err != nil {
				return fmt.Errorf("drop unfinished slot %s: %w", s.cfg.Slot, err)
			}
			slot.exists = false
		}
	}

	rconn, err := connectReplication(ctx, s.cfg.DSN)
	if err != nil {
		return err
	}
	defer rconn.Close(context.Background())

	tt := newTypes(conn)
	if !slot.exists {
		action := "NOEXPORT_SNAPSHOT"
		if needSnapshot {
			action = "EXPORT_SNAPSHOT"
		}
		res, err := pglogrepl.CreateReplicationSlot(ctx, rconn, s.cfg.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{SnapshotAction: action})
		if err != nil {
			return fmt.Errorf("create replication slot %s: %w", s.cfg.Slot, err)
		}
		s.log.Info("created replication slot", zap.String("slot", s.cfg.Slot), zap.String("consistent_point", res.ConsistentPoint))
		if needSnapshot {
			// The exported snapshot lives until rconn runs its next
			// command, so the snapshot reads happen before
			// START_REPLICATION: the stream then starts exactly at the
			// snapshot's consistent point, with no gap and no overlap.
			lsn, _ := pglogrepl.ParseLSN(res.ConsistentPoint)
			n, err := s.snapshot(ctx, h, tt, tables, res.SnapshotName, lsn)
			if err != nil {
				return fmt.Errorf("initial snapshot: %w", err)
			}
			names := make([]string, len(tables))
			for i, t := range tables {
				names[i] = t.String()
			}
			if err := s.saveSnapshotState(ctx, snapshotState{Slot: s.cfg.Slot, Completed: true, LSN: res.ConsistentPoint, Tables: names}); err != nil {
				return err
			}
			s.log.Info("initial snapshot delivered", zap.Int64("rows", n), zap.Int("tables", len(tables)))
		}
	}

	err = pglogrepl.StartReplication(ctx, rconn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + s.cfg.Publication + "'"},
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55006" {
			return fmt.Errorf("slot %s is in use by another process (another Tideline with the same name?): %w", s.cfg.Slot, err)
		}
		return fmt.Errorf("start replication on slot %s: %w", s.cfg.Slot, err)
	}
	if s.gauges.Connected != nil {
		s.gauges.Connected.Set(1)
	}
	s.streaming.Store(true)
	defer s.streaming.Store(false)
	s.log.Info("streaming changes", zap.String("slot", s.cfg.Slot), zap.String("publication", s.cfg.Publication), zap.Int("tables", len(tables)))
	st := newStream(s, conn, rconn, tt, h)
	return st.run(ctx)
}

func (s *Source) loadSnapshotState(ctx context.Context) (*snapshotState, error) {
	raw, err := s.store.Load(ctx, s.snapshotKey())
	if err != nil {
		return nil, fmt.Errorf("load snapshot state: %w", err)
	}
	if raw == nil {
		return nil, nil
	}
	var st snapshotState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("snapshot state %s is corrupt: %w", s.snapshotKey(), err)
	}
	return &st, nil
}

func (s *Source) saveSnapshotState(ctx context.Context, st snapshotState) error {
	raw, _ := json.Marshal(st)
	if err := s.store.Save(ctx, s.snapshotKey(), raw); err != nil {
		return fmt.Errorf("save snapshot state: %w", err)
	}
	return nil
}

// relation is the decoder state of one published table.
type relation struct {
	table *change.Table
	convs []conv
	// counter is the per-transaction event count for
	// data_collection_order; gen says which transaction it counts.
	counter int64
	gen     uint64
}

// stream is one START_REPLICATION session. Its run loop is the only
// goroutine that touches the connections.
type stream struct {
	s     *Source
	conn  *pgx.Conn
	rconn *pgconn.PgConn
	types *types
	h     capture.Handler
	enc   *codec.Encoder

	rels map[uint32]*relation

	batch *change.Batch

	// transaction state
	inTx      bool
	txID      int64
	txLSN     pglogrepl.LSN
	txCommit  int64 // commit time, µs
	txOrder   int64
	txGen     uint64
	lastHand  pglogrepl.LSN // newest checkpoint handed to h
	serverEnd pglogrepl.LSN

	nextStatus time.Time
	confirmed  pglogrepl.LSN
	// lingerUntil, when set, is when a pending batch is handed over if
	// nothing more arrives.
	lingerUntil time.Time

	// reusable decode state
	ev      change.Event
	before  []change.Value
	after   []change.Value
	scratch []byte

	// snapshot state
	snapFirst bool // the next snapshot row is the first
	snapDone  bool
}

func newStream(s *Source, conn *pgx.Conn, rconn *pgconn.PgConn, tt *types, h capture.Handler) *stream {
	return &stream{
		s: s, conn: conn, rconn: rconn, types: tt, h: h,
		enc:   codec.NewEncoder(s.cfg.Version),
		rels:  map[uint32]*relation{},
		batch: newBatch(s.cfg.BatchRecords),
	}
}

func newBatch(n int) *change.Batch { return &change.Batch{Records: make([]change.Record, 0, n)} }

func (st *stream) run(ctx context.Context) error {
	st.confirmed = pglogrepl.LSN(st.s.committed.Load())
	st.nextStatus = time.Now()
	// Reads take no context: pgconn would arm a watcher per message. A
	// read deadline at the next status time bounds each wait instead,
	// and cancellation cuts a blocked read by moving the deadline to now.
	netConn := st.rconn.Conn()
	stop := context.AfterFunc(ctx, func() { _ = netConn.SetReadDeadline(time.Now()) })
	defer stop()
	for {
		if err := st.maybeSendStatus(time.Now()); err != nil {
			return err
		}
		deadline := st.nextStatus
		if !st.lingerUntil.IsZero() && st.lingerUntil.Before(deadline) {
			deadline = st.lingerUntil
		}
		_ = netConn.SetReadDeadline(deadline)
		// Checked after setting the deadline: a cancellation that comes
		// later moves the deadline to now, so the read cannot block past it.
		if ctx.Err() != nil {
			return st.shutdown()
		}
		err := st.receive(ctx)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return st.shutdown()
		}
		if pgconn.Timeout(err) {
			if !st.lingerUntil.IsZero() && !time.Now().Before(st.lingerUntil) {
				// Nothing more came while lingering: hand over.
				if err := st.flush(ctx); err != nil {
					return err
				}
			}
			continue
		}
		return err
	}
}

// receive handles messages until the status is due or an error occurs.
func (st *stream) receive(ctx context.Context) error {
	for {
		msg, err := st.rconn.ReceiveMessage(context.Background())
		if err != nil {
			return err
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := st.copyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream ended by the server")
		}
		// Outside a transaction, with nothing more in the read buffer,
		// wait up to capture.linger for more before handing over: small
		// transactions arriving back to back share a batch, and a quiet
		// stream's last transaction still goes out within the linger, not
		// when more traffic happens to come.
		if !st.inTx && (len(st.batch.Records) > 0 || st.batch.Checkpoint != "") && st.rconn.Frontend().ReadBufferLen() == 0 {
			now := time.Now()
			switch {
			case st.s.cfg.Linger <= 0 || (!st.lingerUntil.IsZero() && !now.Before(st.lingerUntil)):
				if err := st.flush(ctx); err != nil {
					return err
				}
			case st.lingerUntil.IsZero():
				st.lingerUntil = now.Add(st.s.cfg.Linger)
				return nil // the run loop sets the read deadline to it
			}
		}
		if time.Now().After(st.nextStatus) {
			return nil
		}
	}
}

func (st *stream) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		st.serverEnd = max(st.serverEnd, ka.ServerWALEnd)
		if !st.inTx && ka.ServerWALEnd > st.lastHand {
			// Nothing of an open transaction is pending: every change
			// before ServerWALEnd was sent already (the walsender reports
			// how far it decoded), so once the batches before are
			// delivered the slot may move here. This keeps a quiet
			// slot from holding WAL while other tables churn. The
			// receive loop hands the batch over.
			st.batch.Checkpoint = position(ka.ServerWALEnd)
			st.lastHand = ka.ServerWALEnd
		}
		if ka.ReplyRequested {
			st.nextStatus = time.Time{}
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		st.serverEnd = max(st.serverEnd, xld.ServerWALEnd)
		return st.message(ctx, xld.WALStart, xld.WALData)
	}
	return nil
}

// flush hands the batch to the handler, waiting (and keeping the
// replication connection alive) while the in-flight budget is full.
func (st *stream) flush(ctx context.Context) error {
	b := st.batch
	if len(b.Records) == 0 && b.Checkpoint == "" {
		return nil
	}
	if st.rconn == nil {
		return st.flushSnapshot(ctx)
	}
	for {
		hctx, cancel := context.WithDeadline(ctx, st.nextStatus)
		err := st.h.Handle(hctx, b)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		// Back-pressure: Kafka is slow or away. Keep the walsender from
		// timing us out while we wait.
		if err := st.maybeSendStatus(time.Now()); err != nil {
			return err
		}
	}
	st.batch.Reset() // the handler keeps no reference to the batch
	st.lingerUntil = time.Time{}
	return nil
}

// flushSnapshot hands over a snapshot batch. There is no replication
// session to keep alive yet. It holds the newest row back, so that the
// snapshot's very last row can still be marked "last" when the snapshot
// ends (snapshotDone).
func (st *stream) flushSnapshot(ctx context.Context) error {
	b := st.batch
	var held change.Record
	hold := !st.snapDone && len(b.Records) > 0
	if hold {
		held = b.Records[len(b.Records)-1]
		b.Records = b.Records[:len(b.Records)-1]
		b.Bytes -= held.Size()
	}
	if len(b.Records) > 0 {
		if err := st.h.Handle(ctx, b); err != nil {
			if hold {
				b.Add(held)
			}
			return err
		}
	}
	b.Reset()
	if hold {
		b.Add(held)
	}
	return nil
}

// snapshotDone marks the last snapshot row (source.snapshot "last", as
// Debezium does) and hands over what is left.
func (st *stream) snapshotDone(ctx context.Context) error {
	if n := len(st.batch.Records); n > 0 {
		v := st.batch.Records[n-1].Value
		// The source block follows the row images, so the last match is
		// the envelope's own field; "true" and "last" have one length.
		if i := bytes.LastIndex(v, []byte(`"snapshot":"true"`)); i >= 0 {
			copy(v[i+len(`"snapshot":"`):], "last")
		}
	}
	st.snapDone = true
	return st.flushSnapshot(ctx)
}

// maybeSendStatus confirms the committed position when a status is due.
func (st *stream) maybeSendStatus(now time.Time) error {
	if now.Before(st.nextStatus) {
		return nil
	}
	committed := pglogrepl.LSN(st.s.committed.Load())
	if committed > st.confirmed {
		st.confirmed = committed
	}
	idle := !st.inTx && len(st.batch.Records) == 0
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), st.rconn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: st.confirmed,
		WALFlushPosition: st.confirmed,
		WALApplyPosition: st.confirmed,
		ClientTime:       now,
		// When idle, ask for a keepalive: it carries the server's
		// position, which the next status can confirm.
		ReplyRequested: idle,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	st.nextStatus = now.Add(st.s.cfg.StatusInterval)
	if g := st.s.gauges; g.ConfirmedLSN != nil && g.LagBytes != nil {
		g.ConfirmedLSN.Set(float64(st.confirmed))
		if st.serverEnd > st.confirmed {
			g.LagBytes.Set(float64(st.serverEnd - st.confirmed))
		} else {
			g.LagBytes.Set(0)
		}
	}
	return nil
}

// shutdown hands what was read, waits for its delivery, confirms the last
// delivered position to the server and ends the session.
func (st *stream) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st.nextStatus = time.Now().Add(time.Minute)
	if err := st.flush(ctx); err != nil {
		return fmt.Errorf("shutdown: hand over last batch: %w", err)
	}
	if err := st.h.Drain(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	st.nextStatus = time.Time{}
	if err := st.maybeSendStatus(time.Now()); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	st.s.log.Info("confirmed position on shutdown", zap.String("lsn", st.confirmed.String()))
	return nil
}

func (st *stream) message(ctx context.Context, walStart pglogrepl.LSN, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeBegin:
		var m pglogrepl.BeginMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode BEGIN: %w", err)
		}
		st.inTx = true
		st.txID = int64(m.Xid)
		st.txLSN = m.FinalLSN
		st.txCommit = m.CommitTime.UnixMicro()
		st.txOrder = 0
		st.txGen++
		if st.batch.CommitMicros == 0 {
			st.batch.CommitMicros = st.txCommit
		}
	case pglogrepl.MessageTypeCommit:
		var m pglogrepl.CommitMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode COMMIT: %w", err)
		}
		st.inTx = false
		st.batch.Checkpoint = position(m.TransactionEndLSN)
		st.lastHand = m.TransactionEndLSN
		return st.maybeFlushFull(ctx)
	case pglogrepl.MessageTypeRelation:
		var m pglogrepl.RelationMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode RELATION: %w", err)
		}
		return st.relation(ctx, &m)
	case pglogrepl.MessageTypeInsert:
		var m pglogrepl.InsertMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode INSERT: %w", err)
		}
		return st.row(ctx, walStart, change.OpCreate, m.RelationID, nil, false, m.Tuple)
	case pglogrepl.MessageTypeUpdate:
		var m pglogrepl.UpdateMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode UPDATE: %w", err)
		}
		// The old tuple is there with REPLICA IDENTITY FULL ('O'), or
		// when the key changed ('K': key columns, the others null).
		return st.row(ctx, walStart, change.OpUpdate, m.RelationID, m.OldTuple, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld, m.NewTuple)
	case pglogrepl.MessageTypeDelete:
		var m pglogrepl.DeleteMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode DELETE: %w", err)
		}
		return st.row(ctx, walStart, change.OpDelete, m.RelationID, m.OldTuple, m.OldTupleType == pglogrepl.DeleteMessageTupleTypeOld, nil)
	case pglogrepl.MessageTypeTruncate:
		var m pglogrepl.TruncateMessage
		if err := m.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode TRUNCATE: %w", err)
		}
		for _, id := range m.RelationIDs {
			rel, err := st.rel(id)
			if err != nil {
				return err
			}
			st.ev = change.Event{Op: change.OpTruncate, Table: rel.table}
			st.stamp(rel, walStart)
			st.emit(ctx)
		}
		return st.maybeFlushFull(ctx)
	}
	// Origin and Type messages need nothing: types are looked up by OID.
	return nil
}

func (st *stream) rel(id uint32) (*relation, error) {
	rel, ok := st.rels[id]
	if !ok {
		return nil, fmt.Errorf("change for relation %d before its RELATION message", id)
	}
	return rel, nil
}

// relation (re)builds the decoder of a table from a RELATION message, which
// pgoutput sends before a table's first change in a session and again after
// every change of its shape: the new shape applies from the next change on.
func (st *stream) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	keys, err := keyColumns(ctx, st.conn, m.RelationID)
	if err != nil {
		return err
	}
	t := &change.Table{
		Database: st.conn.Config().Database,
		Schema:   m.Namespace,
		Name:     m.RelationName,
		Topic:    st.s.cfg.TopicPrefix + "." + m.Namespace + "." + m.RelationName,
		Columns:  make([]change.Column, len(m.Columns)),
	}
	rel := &relation{table: t, convs: make([]conv, len(m.Columns))}
	for i, c := range m.Columns {
		ti, err := st.types.lookup(ctx, c.DataType)
		if err != nil {
			return fmt.Errorf("table %s.%s column %s: %w", m.Namespace, m.RelationName, c.Name, err)
		}
		key := keys[c.Name]
		if len(keys) == 0 && m.ReplicaIdentity != 'f' {
			key = c.Flags&1 != 0
		}
		t.Columns[i] = change.Column{Name: c.Name, Type: ti.typeName(c.TypeModifier), Logical: ti.logical, Key: key}
		t.HasKey = t.HasKey || key
		rel.convs[i] = ti.conv
	}
	if old, ok := st.rels[m.RelationID]; ok && len(old.table.Columns) != len(t.Columns) {
		st.s.log.Info("table shape changed", zap.String("table", m.Namespace+"."+m.RelationName),
			zap.Int("columns_before", len(old.table.Columns)), zap.Int("columns", len(t.Columns)))
	}
	st.rels[m.RelationID] = rel
	return nil
}

// values decodes a tuple into dst (reused), rendering each present value
// into st.scratch.
func (st *stream) values(dst []change.Value, rel *relation, tup *pglogrepl.TupleData) ([]change.Value, error) {
	n := len(rel.table.Columns)
	if len(tup.Columns) != n {
		return nil, fmt.Errorf("table %s.%s: tuple has %d columns, relation has %d", rel.table.Schema, rel.table.Name, len(tup.Columns), n)
	}
	dst = dst[:0]
	for i, col := range tup.Columns {
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
			dst = append(dst, change.Value{})
		case pglogrepl.TupleDataTypeToast:
			dst = append(dst, change.Value{Kind: change.Unavailable})
		case pglogrepl.TupleDataTypeText:
			start := len(st.scratch)
			var err error
			st.scratch, err = rel.convs[i](st.scratch, col.Data)
			if err != nil {
				// Re-reading the same WAL gives the same value: stop,
				// naming it, rather than retry forever.
				return nil, capture.Fatal(fmt.Errorf("table %s.%s column %s (%s): cannot convert the value: %w",
					rel.table.Schema, rel.table.Name, rel.table.Columns[i].Name, rel.table.Columns[i].Type, err))
			}
			dst = append(dst, change.Value{Kind: change.Present, JSON: st.scratch[start:len(st.scratch):len(st.scratch)]})
		default:
			return nil, fmt.Errorf("table %s.%s column %s: unexpected tuple data type %q", rel.table.Schema, rel.table.Name, rel.table.Columns[i].Name, col.DataType)
		}
	}
	return dst, nil
}

// row emits the events of one row change. old is the old tuple, when
// sent; fullOld says it is the whole old row ('O', REPLICA IDENTITY FULL)
// rather than only its key columns ('K', the others null).
func (st *stream) row(ctx context.Context, lsn pglogrepl.LSN, op change.Op, relID uint32, old *pglogrepl.TupleData, fullOld bool, newTup *pglogrepl.TupleData) error {
	rel, err := st.rel(relID)
	if err != nil {
		return err
	}
	st.scratch = st.scratch[:0]
	var before, after []change.Value
	if old != nil {
		if before, err = st.values(st.before, rel, old); err != nil {
			return err
		}
		st.before = before
	}
	if newTup != nil {
		if after, err = st.values(st.after, rel, newTup); err != nil {
			return err
		}
		st.after = after
		// An unchanged TOASTed value is not sent; with REPLICA IDENTITY
		// FULL the old row has it, so the after image is complete. (A
		// key-only old tuple has nulls there: not a value to copy.)
		if fullOld {
			for i := range after {
				if after[i].Kind == change.Unavailable && before[i].Kind == change.Present {
					after[i] = before[i]
				}
			}
		}
	}
	if op == change.OpUpdate && before != nil && rel.table.HasKey {
		// A key change: Debezium's convention is a delete of the old key
		// (and its tombstone) then a create under the new key, so
		// compacted topics and per-key consumers stay right.
		if keyChanged(rel.table, before, after) {
			st.ev = change.Event{Op: change.OpDelete, Table: rel.table, Before: before}
			st.stamp(rel, lsn)
			st.emit(ctx)
			st.ev = change.Event{Op: change.OpCreate, Table: rel.table, After: after}
			st.stamp(rel, lsn)
			st.emit(ctx)
			return st.maybeFlushFull(ctx)
		}
	}
	st.ev = change.Event{Op: op, Table: rel.table, Before: before, After: after}
	st.stamp(rel, lsn)
	st.emit(ctx)
	return st.maybeFlushFull(ctx)
}

// keyChanged reports whether any key column differs between the images.
func keyChanged(t *change.Table, before, after []change.Value) bool {
	for i, c := range t.Columns {
		if c.Key && (before[i].Kind != after[i].Kind || !bytes.Equal(before[i].JSON, after[i].JSON)) {
			return true
		}
	}
	return false
}

// stamp fills the source and transaction metadata of st.ev.
func (st *stream) stamp(rel *relation, lsn pglogrepl.LSN) {
	if rel.gen != st.txGen {
		rel.gen, rel.counter = st.txGen, 0
	}
	rel.counter++
	st.txOrder++
	st.ev.Source = change.Source{
		Connector: "postgresql",
		Name:      st.s.cfg.Name,
		TsMs:      st.txCommit / 1000,
		TxID:      st.txID,
		LSN:       uint64(lsn),
	}
	st.ev.TxOrder = st.txOrder
	st.ev.TxTableOrder = rel.counter
	st.ev.TxLSN = uint64(st.txLSN)
}

// emit encodes st.ev into the batch, with a tombstone after a delete.
func (st *stream) emit(_ context.Context) {
	ev := &st.ev
	key := st.enc.Key(ev)
	value, order := st.enc.ValueOrder(ev, time.Now().UnixMilli())
	st.batch.Add(change.Record{Topic: ev.Table.Topic, Key: key, Value: value, Order: order, Table: ev.Table, Op: ev.Op})
	if ev.Op == change.OpDelete && st.s.cfg.Tombstones && key != nil {
		st.batch.Add(change.Record{Topic: ev.Table.Topic, Key: key, Table: ev.Table, Op: ev.Op})
	}
}

// maybeFlushFull hands over a batch that reached its size limit, even in
// the middle of a transaction: a large transaction streams through within
// the in-flight budget. Its checkpoint waits for the COMMIT.
func (st *stream) maybeFlushFull(ctx context.Context) error {
	if len(st.batch.Records) >= st.s.cfg.BatchRecords || st.batch.Bytes >= st.s.cfg.BatchBytes {
		cm := st.txCommit
		if err := st.flush(ctx); err != nil {
			return err
		}
		if st.inTx {
			st.batch.CommitMicros = cm
		}
	}
	return nil
}

// snapshot reads every table inside the exported snapshot and hands the
// rows over as op "r", then waits until they are delivered.
func (s *Source) snapshot(ctx context.Context, h capture.Handler, tt *types, tables []tableRef, snapshotName string, lsn pglogrepl.LSN) (int64, error) {
	conn, err := connect(ctx, s.cfg.DSN)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshotName+"'"); err != nil {
		return 0, fmt.Errorf("set snapshot %s: %w", snapshotName, err)
	}
	st := newStream(s, conn, nil, tt, h)
	st.snapFirst = true
	var total int64
	started := time.Now()
	for _, t := range tables {
		n, err := st.snapshotTable(ctx, conn, t, lsn)
		if err != nil {
			return total, fmt.Errorf("table %s: %w", t, err)
		}
		total += n
		s.log.Info("snapshot of table read", zap.String("table", t.String()), zap.Int64("rows", n))
	}
	if err := st.snapshotDone(ctx); err != nil {
		return total, err
	}
	if err := h.Drain(ctx); err != nil {
		return total, err
	}
	s.log.Info("snapshot finished", zap.Int64("rows", total), zap.Duration("took", time.Since(started)))
	return total, nil
}

// describe returns the shape of table t from a query's result columns
// (on conn, whose result is still open) and its key columns, and the
// converters of its values. tt must use another connection.
func describe(ctx context.Context, conn *pgx.Conn, tt *types, t tableRef, keys map[string]bool, fds []pgconn.FieldDescription, topicPrefix string) (*relation, error) {
	tab := &change.Table{
		Database: conn.Config().Database, Schema: t.schema, Name: t.name,
		Topic:   topicPrefix + "." + t.schema + "." + t.name,
		Columns: make([]change.Column, len(fds)),
	}
	rel := &relation{table: tab, convs: make([]conv, len(fds))}
	for i, fd := range fds {
		ti, err := tt.lookup(ctx, fd.DataTypeOID)
		if err != nil {
			return nil, err
		}
		tab.Columns[i] = change.Column{Name: fd.Name, Type: ti.typeName(fd.TypeModifier), Logical: ti.logical, Key: keys[fd.Name]}
		tab.HasKey = tab.HasKey || keys[fd.Name]
		rel.convs[i] = ti.conv
	}
	return rel, nil
}

// Sample reads the shape and up to limit rows of every table cfg
// captures (cfg.DSN, cfg.Tables, cfg.TopicPrefix), converted as the
// snapshot converts them, in one read-only transaction. It changes
// nothing on the server.
func Sample(ctx context.Context, cfg Config, limit int) ([]change.Sample, error) {
	conn, err := connect(ctx, cfg.DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	meta, err := connect(ctx, cfg.DSN) // types and keys, while conn streams rows
	if err != nil {
		return nil, err
	}
	defer meta.Close(context.Background())
	tables, err := resolveTables(ctx, meta, cfg.Tables)
	if err != nil {
		return nil, err
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	tt := newTypes(meta)
	out := make([]change.Sample, 0, len(tables))
	for _, t := range tables {
		keys, err := keyColumns(ctx, meta, t.oid)
		if err != nil {
			return nil, err
		}
		rr := conn.PgConn().ExecParams(ctx, "SELECT * FROM "+t.qualified()+" LIMIT "+strconv.Itoa(max(limit, 0)), nil, nil, nil, []int16{0})
		rel, err := describe(ctx, conn, tt, t, keys, rr.FieldDescriptions(), cfg.TopicPrefix)
		if err != nil {
			rr.Close()
			return nil, fmt.Errorf("table %s: %w", t, err)
		}
		smp := change.Sample{Table: rel.table}
		for rr.NextRow() {
			row := make([]change.Value, 0, len(rel.convs))
			for i, v := range rr.Values() {
				if v == nil {
					row = append(row, change.Value{})
					continue
				}
				b, err := rel.convs[i](nil, v)
				if err != nil {
					rr.Close()
					return nil, fmt.Errorf("table %s column %s: cannot convert the value: %w", t, rel.table.Columns[i].Name, err)
				}
				row = append(row, change.Value{Kind: change.Present, JSON: b})
			}
			smp.Rows = append(smp.Rows, row)
		}
		if _, err := rr.Close(); err != nil {
			return nil, fmt.Errorf("table %s: %w", t, err)
		}
		out = append(out, smp)
	}
	return out, nil
}

func (st *stream) snapshotTable(ctx context.Context, conn *pgx.Conn, t tableRef, lsn pglogrepl.LSN) (int64, error) {
	keys, err := keyColumns(ctx, conn, t.oid)
	if err != nil {
		return 0, err
	}
	// Text results, so values convert exactly as the stream's do.
	rr := conn.PgConn().ExecParams(ctx, "SELECT * FROM "+t.qualified(), nil, nil, nil, []int16{0})
	rel, err := describe(ctx, conn, st.types, t, keys, rr.FieldDescriptions(), st.s.cfg.TopicPrefix)
	if err != nil {
		rr.Close()
		return 0, err
	}
	tab := rel.table
	var counter prometheus.Counter
	if st.s.gauges.SnapshotRows != nil {
		counter = st.s.gauges.SnapshotRows(t.String())
	}
	var n int64
	now := time.Now()
	for rr.NextRow() {
		st.scratch = st.scratch[:0]
		after := st.after[:0]
		for i, v := range rr.Values() {
			if v == nil {
				after = append(after, change.Value{})
				continue
			}
			start := len(st.scratch)
			st.scratch, err = rel.convs[i](st.scratch, v)
			if err != nil {
				rr.Close()
				return n, capture.Fatal(fmt.Errorf("column %s (%s): cannot convert the value: %w", tab.Columns[i].Name, tab.Columns[i].Type, err))
			}
			after = append(after, change.Value{Kind: change.Present, JSON: st.scratch[start:len(st.scratch):len(st.scratch)]})
		}
		st.after = after
		snap := "true"
		if st.snapFirst {
			snap, st.snapFirst = "first", false
		}
		st.ev = change.Event{Op: change.OpRead, Table: tab, After: after, Source: change.Source{
			Connector: "postgresql", Name: st.s.cfg.Name, TsMs: now.UnixMilli(), Snapshot: snap, LSN: uint64(lsn),
		}}
		st.emit(ctx)
		n++
		if counter != nil {
			counter.Inc()
		}
		if err := st.maybeFlushFull(ctx); err != nil {
			rr.Close()
			return n, err
		}
	}
	if _, err := rr.Close(); err != nil {
		return n, fmt.Errorf("read rows: %w", err)
	}
	return n, nil
}
