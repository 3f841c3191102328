package icebergsink

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/sinks/sinktest"
)

// TestConformance runs the sink suite against a local warehouse with a
// SQLite catalog.
func TestConformance(t *testing.T) {
	// Compacting as the daemon's default does keeps the per-batch read
	// of the current rows bounded: PerKeyOrderAcrossBatches makes ~150
	// commits.
	cfg := Config{Name: "s", Warehouse: t.TempDir(), CompactEvery: 20}
	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) apply.Sink {
			s, err := New(context.Background(), cfg, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Rows: func(t *testing.T, schema, table string) []map[string]*string {
			return textRowsOf(t, cfg, schema, table)
		},
	})
}

// textRowsOf reads a table as column -> text (nil for null), as the
// conformance suite wants it.
func textRowsOf(t *testing.T, cfg Config, schema, table string) []map[string]*string {
	t.Helper()
	rows, err := ScanRows(context.Background(), cfg, schema, table)
	if err != nil {
		t.Fatalf("scan %s.%s: %v", schema, table, err)
	}
	out := make([]map[string]*string, 0, len(rows))
	for _, r := range rows {
		m := make(map[string]*string, len(r))
		for k, v := range r {
			if v == nil {
				m[k] = nil
				continue
			}
			s := textOf(v)
			m[k] = &s
		}
		out = append(out, m)
	}
	return out
}

func textOf(v any) string {
	switch v := v.(type) {
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		return v
	case []byte:
		return string(v)
	case time.Time:
		return v.Format(time.RFC3339Nano)
	}
	return fmt.Sprint(v)
}
