package mysql

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// batches is a capture.Handler that keeps copies of what it is handed.
type batches struct{ got []change.Batch }

func (b *batches) Handle(_ context.Context, x *change.Batch) error {
	c := *x
	c.Records = append([]change.Record(nil), x.Records...)
	b.got = append(b.got, c)
	return nil
}

func (b *batches) Drain(context.Context) error { return nil }

// TestMySQL8GTIDTransaction feeds the stream the events of a MySQL 8
// transaction (GTID event, BEGIN, rows, XID carrying the executed set):
// the events carry the uuid:number GTID, and the checkpoint holds the
// uuid:interval set, which parses back for StartSyncGTID.
func TestMySQL8GTIDTransaction(t *testing.T) {
	sid := uuid.MustParse("3e11fa47-71ca-11e1-9e33-c80aa9429562")
	s := New(Config{Name: "p", TopicPrefix: "p", Tombstones: true, BatchRecords: 100, BatchBytes: 1 << 20, Version: "t"}, nil, zap.NewNop(), Gauges{})
	d := newTracker("app.*")
	tables := mustApply(t, d, map[string]*table{}, "app", "CREATE TABLE t (id BIGINT UNSIGNED PRIMARY KEY, j JSON)")
	h := &batches{}
	st := &stream{s: s, h: h, tables: tables, hist: &history{}, ddl: d, enc: codec.NewEncoder("t"), batch: &change.Batch{}, file: "binlog.000003"}
	gset, err := gmysql.ParseGTIDSet(gmysql.MySQLFlavor, sid.String()+":1-7")
	if err != nil {
		t.Fatal(err)
	}
	hdr := func(pos uint32, typ replication.EventType) *replication.EventHeader {
		return &replication.EventHeader{Timestamp: 1_800_000_000, EventType: typ, ServerID: 9, LogPos: pos, EventSize: 20}
	}
	ctx := context.Background()
	for _, ev := range []*replication.BinlogEvent{
		{Header: hdr(200, replication.GTID_EVENT), Event: &replication.GTIDEvent{SID: sid[:], GNO: 7}},
		{Header: hdr(250, replication.QUERY_EVENT), Event: &replication.QueryEvent{Query: []byte("BEGIN"), SlaveProxyID: 42}},
		{Header: hdr(300, replication.WRITE_ROWS_EVENTv2), Event: &replication.RowsEvent{
			Table: &replication.TableMapEvent{Schema: []byte("app"), Table: []byte("t")},
			Rows:  [][]any{{int64(-1), []byte(`{"k": [1, "x"]}`)}},
		}},
		{Header: hdr(350, replication.XID_EVENT), Event: &replication.XIDEvent{XID: 5, GSet: gset}},
	} {
		if err := st.event(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(h.got) != 1 || len(h.got[0].Records) != 1 {
		t.Fatalf("got %d batches, want 1 with 1 record", len(h.got))
	}
	b := h.got[0]
	v := string(b.Records[0].Value)
	for _, want := range []string{
		`"after":{"id":18446744073709551615,"j":"{\"k\": [1, \"x\"]}"}`,
		`"server_id":9,"gtid":"3e11fa47-71ca-11e1-9e33-c80aa9429562:7","file":"binlog.000003","pos":280,"row":0,"thread":42`,
		`"transaction":{"id":"3e11fa47-71ca-11e1-9e33-c80aa9429562:7","total_order":1`,
	} {
		if !strings.Contains(v, want) {
			t.Errorf("value lacks %s:\n%s", want, v)
		}
	}
	if k := string(b.Records[0].Key); k != `{"id":18446744073709551615}` {
		t.Errorf("key %s", k)
	}
	var p position
	if err := json.Unmarshal([]byte(b.Checkpoint), &p); err != nil {
		t.Fatal(err)
	}
	if p.File != "binlog.000003" || p.Pos != 350 || p.GTID != sid.String()+":1-7" {
		t.Errorf("checkpoint %+v", p)
	}
	back, err := gmysql.ParseGTIDSet(gmysql.MySQLFlavor, p.GTID)
	if err != nil || !back.Equal(gset) {
		t.Errorf("stored GTID set %q does not parse back: %v", p.GTID, err)
	}
}
