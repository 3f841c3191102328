package mysql

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/replication"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// newTestStream is a stream over app.t (id, a) with no server connection:
// a statement that reached the server for a shape would panic.
func newTestStream(t *testing.T, hist *history) *stream {
	t.Helper()
	s := New(Config{Name: "p", TopicPrefix: "p", BatchRecords: 100, BatchBytes: 1 << 20, Version: "t"}, nil, zap.NewNop(), Gauges{})
	d := newTracker("app.*")
	tables := mustApply(t, d, map[string]*table{}, "app", "CREATE TABLE t (id INT PRIMARY KEY, a INT)")
	return &stream{s: s, h: &batches{}, tables: tables, hist: hist, ddl: d, enc: codec.NewEncoder("t"), batch: &change.Batch{}, file: "binlog.000003"}
}

func queryEvent(pos uint32, schema, q string) *replication.BinlogEvent {
	return &replication.BinlogEvent{
		Header: &replication.EventHeader{EventType: replication.QUERY_EVENT, LogPos: pos, EventSize: 50},
		Event:  &replication.QueryEvent{Schema: []byte(schema), Query: []byte(q)},
	}
}

// TestStreamUntrackedReplay: a statement the parser rejects, replayed
// from before it, takes the shape the schema history recorded for it at
// exactly its position (read from the server the first time), not
// today's; statements that change no columns never reach the fallback.
func TestStreamUntrackedReplay(t *testing.T) {
	hist := &history{Entries: []historyEntry{
		{File: "binlog.000003", Pos: 500, Table: "app.t", Columns: []columnSpec{
			{Name: "id", DataType: "int", ColType: "int(11)", Key: true}, {Name: "a", DataType: "int", ColType: "int(11)"}, {Name: "c", DataType: "int", ColType: "int(11)"},
		}},
	}}
	st := newTestStream(t, hist)
	ctx := context.Background()
	for _, ev := range []*replication.BinlogEvent{
		// Rejected by the parser, but about no columns (st.conn is nil:
		// a fallback would panic).
		queryEvent(300, "app", "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1"),
		queryEvent(400, "app", "CREATE DEFINER=`root`@`localhost` TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW SET @x = 1"),
		// MariaDB's WAIT n: the parser rejects it.
		queryEvent(500, "", "ALTER TABLE app.t WAIT 5 ADD COLUMN c INT"),
	} {
		if err := st.event(ctx, ev); err != nil {
			t.Fatalf("%s: %v", ev.Event.(*replication.QueryEvent).Query, err)
		}
	}
	if got := shape(st.tables["app.t"]); got != "id:int* a:int c:int" {
		t.Errorf("after the replayed ALTER: %s, want the recorded id a c", got)
	}
	if hist.dirty || len(hist.Entries) != 1 {
		t.Errorf("the replay changed the history: %+v", hist.Entries)
	}
}

// TestStreamBinlogGoesBack: a rotation to a binlog file numbered below
// the current one (a failover, RESET MASTER) stops the stream with a
// fatal error that says why and how to recover; a forward one does not.
func TestStreamBinlogGoesBack(t *testing.T) {
	st := newTestStream(t, &history{})
	rotate := func(file string) error {
		return st.event(context.Background(), &replication.BinlogEvent{
			Header: &replication.EventHeader{EventType: replication.ROTATE_EVENT},
			Event:  &replication.RotateEvent{Position: 4, NextLogName: []byte(file)},
		})
	}
	for _, f := range []string{"binlog.000003", "binlog.000004"} {
		if err := rotate(f); err != nil || st.file != f {
			t.Fatalf("rotate to %s: %v (file %s)", f, err, st.file)
		}
	}
	err := rotate("binlog.000001")
	if err == nil || !capture.IsFatal(err) {
		t.Fatalf("rotate back to binlog.000001: %v, want a fatal error", err)
	}
	for _, want := range []string{"binlog.000004 to binlog.000001", "failover", "RESET MASTER", "sinks", "snapshot", "mysql/p/position", "reset the sinks' targets"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if st.file != "binlog.000004" {
		t.Errorf("the stream moved to %s", st.file)
	}
}

// memStore is a checkpoint.Store in memory that counts saves per key.
type memStore struct {
	vals  map[string][]byte
	saves map[string]int
}

func (m *memStore) Load(_ context.Context, key string) ([]byte, error) { return m.vals[key], nil }

func (m *memStore) Save(_ context.Context, key string, v []byte) error {
	m.vals[key] = append([]byte(nil), v...)
	m.saves[key]++
	return nil
}

// TestStreamPrunesBeforeSave: each DDL's history save first forgets what
// no restart from the stored position can need; the committed position,
// not yet stored, does not count. A statement that changes no shape
// saves nothing.
func TestStreamPrunesBeforeSave(t *testing.T) {
	e := func(table string, pos uint32, dropped bool) historyEntry {
		return historyEntry{File: "binlog.000003", Pos: pos, Table: table, Dropped: dropped,
			Columns: []columnSpec{{Name: "id", DataType: "int", ColType: "int(11)", Key: true}, {Name: "a", DataType: "int", ColType: "int(11)"}}}
	}
	hist := &history{Entries: []historyEntry{e("app.t", 100, false), e("app.t", 200, false), e("app.u", 100, false), e("app.u", 150, true)}}
	st := newTestStream(t, hist)
	store := &memStore{vals: map[string][]byte{}, saves: map[string]int{}}
	st.s.store = store
	st.s.stored.Store(&position{File: "binlog.000003", Pos: 300})
	st.s.Commit(position{File: "binlog.000003", Pos: 450}.encode()) // delivered, not stored
	ctx := context.Background()
	saved := func() string {
		t.Helper()
		var h history
		if err := json.Unmarshal(store.vals[st.s.historyKey()], &h); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range h.Entries {
			out = append(out, fmt.Sprintf("%s@%d", x.Table, x.Pos))
		}
		return strings.Join(out, " ")
	}
	if err := st.event(ctx, queryEvent(400, "app", "ALTER TABLE t ADD COLUMN b INT")); err != nil {
		t.Fatal(err)
	}
	if got, want := saved(), "app.t@200 app.t@400"; got != want || store.saves[st.s.historyKey()] != 1 {
		t.Errorf("history saved %d times as %s, want once as %s", store.saves[st.s.historyKey()], got, want)
	}
	if err := st.event(ctx, queryEvent(420, "app", "GRANT SELECT ON app.t TO someone")); err != nil {
		t.Fatal(err)
	}
	if n := store.saves[st.s.historyKey()]; n != 1 {
		t.Errorf("a statement that changed no shape saved the history (%d saves)", n)
	}
	// The saver stores the committed position: now the next save may
	// forget the shape before it.
	var last change.Position
	if err := st.s.saveCommitted(ctx, &last); err != nil {
		t.Fatal(err)
	}
	if err := st.event(ctx, queryEvent(500, "app", "ALTER TABLE t ADD COLUMN c INT")); err != nil {
		t.Fatal(err)
	}
	if got, want := saved(), "app.t@400 app.t@500"; got != want {
		t.Errorf("history saved as %s, want %s", got, want)
	}
}
