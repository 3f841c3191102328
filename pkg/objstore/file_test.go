package objstore_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tideline-cdc/tideline/pkg/objstore"
)

func newFileCase(t *testing.T) storeCase {
	dir := filepath.Join(t.TempDir(), "lake") // Open creates it
	s, err := objstore.Open(context.Background(), "file://"+dir, objstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return storeCase{store: s, root: "file://" + dir, pending: func(t *testing.T) int {
		return len(tempFiles(t, dir))
	}}
}

func TestFileStore(t *testing.T) {
	runStoreChecks(t, newFileCase)
}

// tempFiles returns the writers' temporary files under dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), objstore.TempPrefix) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestFileStoreOnDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := objstore.Open(ctx, "file://"+dir, objstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := "public.items/date=2026-11-22/x.parquet"

	// An open writer's temporary file sits next to the key, and List does not show it.
	w := create(t, s, key)
	mustWrite(t, w, []byte("pending"))
	tmps := tempFiles(t, dir)
	if len(tmps) != 1 || filepath.Dir(tmps[0]) != filepath.Join(dir, "public.items", "date=2026-11-22") {
		t.Fatalf("temporary files = %v, want one in the key's directory", tmps)
	}
	// So does a leftover of a writer that crashed before Commit.
	stray := filepath.Join(dir, "public.items", objstore.TempPrefix+"old.parquet-123")
	if err := os.WriteFile(stray, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantList(t, s, "")
	wantList(t, s, "public.items/")

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if tmps := tempFiles(t, dir); len(tmps) != 1 || tmps[0] != stray {
		t.Errorf("temporary files after Commit = %v, want only the stray one", tmps)
	}
	// The committed file is where the key says, readable by other users (DuckDB), and its
	// URL names it.
	path := filepath.Join(dir, "public.items", "date=2026-11-22", "x.parquet")
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", info.Mode().Perm())
	}
	if got, want := s.URL(key), "file://"+filepath.ToSlash(path); got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	wantList(t, s, "", objstore.Object{Key: key, Size: int64(len("pending"))})

	// Symlinks and directories are not files.
	if err := os.Symlink(path, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	wantList(t, s, "", objstore.Object{Key: key, Size: int64(len("pending"))})
	if _, err := s.Open(ctx, "public.items"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(directory): err = %v, want fs.ErrNotExist", err)
	}
	if err := s.Delete(ctx, "public.items"); err != nil {
		t.Errorf("Delete(directory) = %v, want nil (no such file)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "public.items")); err != nil {
		t.Errorf("Delete(directory) touched the directory: %v", err)
	}

	// A key below an existing file cannot be created, and that will not change on retry.
	_, err = s.Create(ctx, key+"/below")
	if err == nil || !objstore.IsPermanent(err) || !strings.Contains(err.Error(), s.URL(key+"/below")) {
		t.Errorf("Create below a file: err = %v, want a permanent error naming the key", err)
	}
}

func TestOpenFileNotDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := objstore.Open(context.Background(), "file://"+file, objstore.Options{})
	if err == nil || !objstore.IsPermanent(err) || !strings.Contains(err.Error(), file) {
		t.Fatalf("Open on a file: err = %v, want a permanent error naming it", err)
	}
}

func TestParse(t *testing.T) {
	good := []struct {
		url  string
		want objstore.Location
		str  string
	}{
		{"file:///data/lake", objstore.Location{Scheme: "file", Dir: "/data/lake"}, "file:///data/lake"},
		{"file:///data/lake/", objstore.Location{Scheme: "file", Dir: "/data/lake"}, "file:///data/lake"},
		{"file://localhost/data/./x/../lake", objstore.Location{Scheme: "file", Dir: "/data/lake"}, "file:///data/lake"},
		{"s3://bucket", objstore.Location{Scheme: "s3", Bucket: "bucket"}, "s3://bucket"},
		{"s3://bucket/", objstore.Location{Scheme: "s3", Bucket: "bucket"}, "s3://bucket"},
		{"s3://my.bucket-1/cdc/lake/", objstore.Location{Scheme: "s3", Bucket: "my.bucket-1", Prefix: "cdc/lake"}, "s3://my.bucket-1/cdc/lake"},
	}
	for _, g := range good {
		loc, err := objstore.Parse(g.url)
		if err != nil {
			t.Errorf("Parse(%q): %v", g.url, err)
			continue
		}
		if loc != g.want || loc.String() != g.str {
			t.Errorf("Parse(%q) = %+v (%s), want %+v (%s)", g.url, loc, loc, g.want, g.str)
		}
	}

	bad := []struct{ url, mention string }{
		{"", "empty"},
		{"/data/lake", "missing scheme"},
		{"data/lake", "missing scheme"},
		{"gs://bucket/x", `scheme "gs"`},
		{"file://data/lake", `host "data"`},
		{"file:data/lake", `relative path "data/lake"`},
		{"file://", "missing directory"},
		{"s3://", "missing bucket"},
		{"s3:///prefix", "missing bucket"},
		{"s3://bucket:9000/x", "port"},
		{"s3://key:secret@bucket/x", "user info"},
		{"s3://bucket/x?region=eu", "query"},
		{"s3://bu*cket/x", "*"},
		{"s3://bucket/a//b", "prefix"},
		{"s3://bucket/a/../b", "prefix"},
	}
	for _, b := range bad {
		_, err := objstore.Parse(b.url)
		if !errors.Is(err, objstore.ErrInvalidURL) || !objstore.IsPermanent(err) {
			t.Errorf("Parse(%q): err = %v, want permanent ErrInvalidURL", b.url, err)
			continue
		}
		if !strings.Contains(err.Error(), b.mention) {
			t.Errorf("Parse(%q): error %q does not mention %q", b.url, err, b.mention)
		}
	}
}
