package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	icebergsink "github.com/tideline-cdc/tideline/sinks/iceberg"
)

// TestIcebergCompact writes a few commits with the iceberg sink, then runs
// tideline iceberg compact on the config that names it: the files are
// rewritten and a scan still holds every row.
func TestIcebergCompact(t *testing.T) {
	dir := t.TempDir()
	warehouse := filepath.Join(dir, "wh")
	cfgPath := filepath.Join(dir, "t.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("name: x\nsource:\n  type: postgres\n  dsn: postgres://u@h:5432/db\n  tables: [public.a]\n"+
		"sinks:\n  - name: lake\n    type: iceberg\n    warehouse: %s\n", warehouse)), 0o600)

	ctx := context.Background()
	s, err := icebergsink.New(ctx, icebergsink.Config{Name: "lake", Warehouse: warehouse}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	tab := &change.Table{Schema: "public", Name: "a", Topic: "x.public.a", HasKey: true, Columns: []change.Column{
		{Name: "id", Type: "int8", Logical: change.Int64, Key: true}, {Name: "v", Type: "text", Logical: change.String}}}
	for b := range 4 {
		tb := &apply.TableBatch{Table: tab, Topic: tab.Topic}
		for i := range 5 {
			off := int64(b*5 + i)
			tb.Rows = append(tb.Rows, apply.Row{Op: change.OpCreate, Key: []byte(fmt.Sprintf(`{"id":%d}`, off)), Order: []byte(fmt.Sprintf("%08x", off)),
				Values:  []json.RawMessage{[]byte(fmt.Sprint(off)), []byte(`"v"`)},
				Records: []*kgo.Record{{Topic: tab.Topic, Offset: off}}})
		}
		if err := s.Apply(ctx, tb); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	if _, err := run("iceberg", "compact", "--config", cfgPath, "--sink", "nope"); err == nil || !strings.Contains(err.Error(), `no iceberg sink named "nope"`) {
		t.Errorf("unknown sink: %v", err)
	}
	out, err := run("iceberg", "compact", "--config", cfgPath, "--sink", "lake", "--expire-older-than", "-1s")
	if err != nil {
		t.Fatalf("compact: %v\n%s", err, out)
	}
	if !strings.Contains(out, "public.a: data files 4 -> 1") {
		t.Errorf("compact printed %q, want public.a's 4 data files rewritten into 1", out)
	}
	rows, err := icebergsink.ScanRows(ctx, icebergsink.Config{Warehouse: warehouse}, "public", "a")
	if err != nil || len(rows) != 20 {
		t.Errorf("after compaction: %d rows (%v), want 20", len(rows), err)
	}
}
