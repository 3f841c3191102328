package parquet

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/objstore"
)

// TestS3ChangeLog writes to an in-process S3 (gofakes3), restarts the sink
// on a replay, and reads the objects back with DuckDB.
func TestS3ChangeLog(t *testing.T) {
	backend := s3mem.New()
	if err := backend.CreateBucket("lake"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	checkS3ChangeLog(t, srv.URL, "k", "s")
}

// TestRealS3Gateway is TestS3ChangeLog against a real S3 server process
// (versitygw, built from the Go module proxy).
func TestRealS3Gateway(t *testing.T) {
	gw := testenv.NewS3Gateway(t)
	gw.CreateBucket(t, "lake")
	checkS3ChangeLog(t, gw.Endpoint, gw.AccessKey, gw.Secret)
}

// checkS3ChangeLog writes a change log to s3://lake/cdc at endpoint,
// restarts the sink on a replay, and reads the objects back with DuckDB.
func checkS3ChangeLog(t *testing.T, endpoint, key, secret string) {
	cfg := Config{Name: "log", Path: "s3://lake/cdc", S3: objstore.Options{Endpoint: endpoint, Region: "us-east-1",
		PathStyle: true, AccessKeyID: key, SecretAccessKey: secret, SpoolDir: t.TempDir()}}
	ctx := context.Background()
	open := func() *Sink {
		s, err := New(ctx, cfg, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	batch := func(from, to int64) *apply.TableBatch {
		tb := &apply.TableBatch{Table: allTypes, Topic: allTypes.Topic}
		for off := from; off <= to; off++ {
			tb.Rows = append(tb.Rows, kv(change.OpCreate, 2, off, day1, int(off), fmt.Sprintf(`"v%d"`, off)))
		}
		return tb
	}
	if err := open().Apply(ctx, batch(0, 99)); err != nil {
		t.Fatal(err)
	}
	if err := open().Apply(ctx, batch(50, 149)); err != nil { // a replay after a crash
		t.Fatal(err)
	}
	st := open().Store()
	objs, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
		rc, err := st.Open(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(local, filepath.FromSlash(o.Key))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := "public.things/date=2026-11-22/app.public.things+2+00000000000000000000+00000000000000000099.parquet," +
		"public.things/date=2026-11-22/app.public.things+2+00000000000000000100+00000000000000000149.parquet"
	if strings.Join(keys, ",") != want {
		t.Errorf("objects %v, want %s", keys, want)
	}
	if u := st.URL(keys[0]); !strings.HasPrefix(u, "s3://lake/cdc/public.things/") {
		t.Errorf("URL %s: want under s3://lake/cdc/", u)
	}
	got := query(t, duck(t), `SELECT count(*), count(DISTINCT id) FROM read_parquet('`+Glob("file://"+local, allTypes)+`')`)
	if got[0] != "150|150" {
		t.Errorf("rows, distinct ids = %s; want 150|150", got[0])
	}
}
