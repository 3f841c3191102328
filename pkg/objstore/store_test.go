package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tideline-cdc/tideline/pkg/objstore"
)

// storeCase is a fresh, empty store of one kind, plus what the shared checks need to know about
// it.
type storeCase struct {
	store objstore.Store
	root  string // the URL the store was opened with, canonical form
	// pending reports the in-progress writes the backend holds (temporary files, open
	// multipart uploads) — zero after every Commit and Abort.
	pending func(t *testing.T) int
}

// runStoreChecks holds every store to the contract documented on objstore.Store and Writer.
func runStoreChecks(t *testing.T, newCase func(t *testing.T) storeCase) {
	ctx := context.Background()

	t.Run("nested key is invisible until commit", func(t *testing.T) {
		c := newCase(t)
		key := "public.items/date=2026-11-22/x.parquet"
		data := randomBytes(1000)
		w := create(t, c.store, key)
		mustWrite(t, w, data)
		if objs := list(t, c.store, ""); len(objs) != 0 {
			t.Fatalf("List before Commit = %v, want nothing", objs)
		}
		if _, err := c.store.Open(ctx, key); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Open before Commit: err = %v, want fs.ErrNotExist", err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		wantList(t, c.store, "", objstore.Object{Key: key, Size: int64(len(data))})
		wantContent(t, c.store, key, data)
		if got, want := c.store.URL(key), c.root+"/"+key; got != want {
			t.Errorf("URL = %q, want %q", got, want)
		}
		if err := w.Abort(); err != nil {
			t.Errorf("Abort after Commit = %v, want nil", err)
		}
		if n := c.pending(t); n != 0 {
			t.Errorf("%d pending writes after Commit, want 0", n)
		}
	})

	t.Run("commit replaces atomically", func(t *testing.T) {
		c := newCase(t)
		key := "t/replace.parquet"
		v1, v2 := randomBytes(300), randomBytes(700)
		put(t, c.store, key, v1)

		w := create(t, c.store, key)
		mustWrite(t, w, v2)
		// The old file stays whole and alone while the new one is being written.
		wantContent(t, c.store, key, v1)
		wantList(t, c.store, "t/", objstore.Object{Key: key, Size: int64(len(v1))})
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		wantContent(t, c.store, key, v2)
		wantList(t, c.store, "t/", objstore.Object{Key: key, Size: int64(len(v2))})
	})

	t.Run("abort leaves nothing", func(t *testing.T) {
		c := newCase(t)
		w := create(t, c.store, "t/new.parquet")
		mustWrite(t, w, randomBytes(500))
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if err := w.Abort(); err != nil {
			t.Errorf("second Abort = %v, want nil", err)
		}
		if _, err := w.Write([]byte("x")); !errors.Is(err, objstore.ErrClosed) {
			t.Errorf("Write after Abort: err = %v, want ErrClosed", err)
		}
		if err := w.Commit(); !errors.Is(err, objstore.ErrClosed) {
			t.Errorf("Commit after Abort: err = %v, want ErrClosed", err)
		}
		if objs := list(t, c.store, ""); len(objs) != 0 {
			t.Errorf("List after Abort = %v, want nothing", objs)
		}
		if _, err := c.store.Open(ctx, "t/new.parquet"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open after Abort: err = %v, want fs.ErrNotExist", err)
		}
		if n := c.pending(t); n != 0 {
			t.Errorf("%d pending writes after Abort, want 0", n)
		}
	})

	t.Run("abort keeps the previous file", func(t *testing.T) {
		c := newCase(t)
		v1 := randomBytes(100)
		put(t, c.store, "k", v1)
		w := create(t, c.store, "k")
		mustWrite(t, w, randomBytes(200))
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		wantContent(t, c.store, "k", v1)
	})

	t.Run("cancelled context publishes nothing", func(t *testing.T) {
		c := newCase(t)
		cctx, cancel := context.WithCancel(ctx)
		w, err := c.store.Create(cctx, "t/cancelled")
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, w, randomBytes(100))
		cancel()
		err = w.Commit()
		if !errors.Is(err, context.Canceled) || objstore.IsPermanent(err) {
			t.Fatalf("Commit after cancel: err = %v, want transient context.Canceled", err)
		}
		if err := w.Abort(); err != nil {
			t.Errorf("Abort after failed Commit = %v", err)
		}
		if objs := list(t, c.store, ""); len(objs) != 0 {
			t.Errorf("List = %v, want nothing", objs)
		}
		if n := c.pending(t); n != 0 {
			t.Errorf("%d pending writes, want 0", n)
		}
	})

	t.Run("list filters by string prefix and sorts by bytes", func(t *testing.T) {
		c := newCase(t)
		keys := []string{"t/a/bc", "t/a.b", "t/a/b", "t/ab", "u/x", "t/a/b2/deep/z", "t/A"}
		for i, k := range keys {
			put(t, c.store, k, randomBytes(i+1))
		}
		size := func(k string) int64 {
			for i, kk := range keys {
				if kk == k {
					return int64(i + 1)
				}
			}
			panic(k)
		}
		objs := func(ks ...string) []objstore.Object {
			var out []objstore.Object
			for _, k := range ks {
				out = append(out, objstore.Object{Key: k, Size: size(k)})
			}
			return out
		}
		wantList(t, c.store, "", objs("t/A", "t/a.b", "t/a/b", "t/a/b2/deep/z", "t/a/bc", "t/ab", "u/x")...)
		wantList(t, c.store, "t/a", objs("t/a.b", "t/a/b", "t/a/b2/deep/z", "t/a/bc", "t/ab")...)
		wantList(t, c.store, "t/a/b", objs("t/a/b", "t/a/b2/deep/z", "t/a/bc")...)
		wantList(t, c.store, "t/a/b2/", objs("t/a/b2/deep/z")...)
		wantList(t, c.store, "t/a/b/", objs()...)
		wantList(t, c.store, "nothing/here/", objs()...)
		wantList(t, c.store, "t/a/b2/deep/z", objs("t/a/b2/deep/z")...)
	})

	t.Run("delete", func(t *testing.T) {
		c := newCase(t)
		put(t, c.store, "d/one", []byte("1"))
		put(t, c.store, "d/two", []byte("22"))
		if err := c.store.Delete(ctx, "d/one"); err != nil {
			t.Fatal(err)
		}
		if err := c.store.Delete(ctx, "d/one"); err != nil {
			t.Errorf("deleting a missing key: %v, want nil", err)
		}
		if _, err := c.store.Open(ctx, "d/one"); !errors.Is(err, fs.ErrNotExist) || !objstore.IsPermanent(err) {
			t.Errorf("Open deleted key: err = %v, want permanent fs.ErrNotExist", err)
		}
		wantList(t, c.store, "", objstore.Object{Key: "d/two", Size: 2})
	})

	t.Run("invalid keys", func(t *testing.T) {
		c := newCase(t)
		for _, key := range []string{"", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", "a\\b",
			"dir/" + objstore.TempPrefix + "x", "bad\xffutf8"} {
			_, err := c.store.Create(ctx, key)
			if !errors.Is(err, objstore.ErrInvalidKey) || !objstore.IsPermanent(err) {
				t.Errorf("Create(%q): err = %v, want permanent ErrInvalidKey", key, err)
			}
			if _, err := c.store.Open(ctx, key); !errors.Is(err, objstore.ErrInvalidKey) {
				t.Errorf("Open(%q): err = %v, want ErrInvalidKey", key, err)
			}
			if err := c.store.Delete(ctx, key); !errors.Is(err, objstore.ErrInvalidKey) {
				t.Errorf("Delete(%q): err = %v, want ErrInvalidKey", key, err)
			}
		}
		for _, prefix := range []string{"/abs", "../x", "a/../", "./a"} {
			if _, err := c.store.List(ctx, prefix); !errors.Is(err, objstore.ErrInvalidKey) {
				t.Errorf("List(%q): err = %v, want ErrInvalidKey", prefix, err)
			}
		}
	})

	t.Run("large file in parts", func(t *testing.T) {
		// 11 MiB and a bit: with 5 MiB parts, a three-part multipart upload on S3.
		c := newCase(t)
		data := randomBytes(11<<20 + 12345)
		w := create(t, c.store, "big/file.parquet")
		// Write in uneven chunks, as an encoder would.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+rand.IntN(300<<10))
			mustWrite(t, w, rest[:n])
			rest = rest[n:]
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		wantList(t, c.store, "big/", objstore.Object{Key: "big/file.parquet", Size: int64(len(data))})
		wantContent(t, c.store, "big/file.parquet", data)
		if n := c.pending(t); n != 0 {
			t.Errorf("%d pending writes after a multipart Commit, want 0", n)
		}
	})

	t.Run("concurrent writers", func(t *testing.T) {
		c := newCase(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				key := fmt.Sprintf("c/part-%02d", i)
				w, err := c.store.Create(ctx, key)
				if err != nil {
					errs <- err
					return
				}
				defer w.Abort() //nolint:errcheck // a no-op after Commit
				if _, err := w.Write(bytes.Repeat([]byte{byte(i)}, 1000+i)); err != nil {
					errs <- err
					return
				}
				if i%2 == 1 {
					return // the deferred Abort discards it
				}
				if err := w.Commit(); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		var want []objstore.Object
		for i := 0; i < n; i += 2 {
			want = append(want, objstore.Object{Key: fmt.Sprintf("c/part-%02d", i), Size: int64(1000 + i)})
		}
		wantList(t, c.store, "c/", want...)
		if n := c.pending(t); n != 0 {
			t.Errorf("%d pending writes, want 0", n)
		}
	})
}

func create(t *testing.T, s objstore.Store, key string) objstore.Writer {
	t.Helper()
	w, err := s.Create(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Abort() })
	return w
}

func mustWrite(t *testing.T, w objstore.Writer, p []byte) {
	t.Helper()
	if n, err := w.Write(p); err != nil || n != len(p) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
	}
}

func put(t *testing.T, s objstore.Store, key string, data []byte) {
	t.Helper()
	w := create(t, s, key)
	mustWrite(t, w, data)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, s objstore.Store, prefix string) []objstore.Object {
	t.Helper()
	objs, err := s.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func wantList(t *testing.T, s objstore.Store, prefix string, want ...objstore.Object) {
	t.Helper()
	got := list(t, s, prefix)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List(%q) =\n  %v\nwant\n  %v", prefix, got, want)
	}
}

func wantContent(t *testing.T, s objstore.Store, key string, want []byte) {
	t.Helper()
	r, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("content of %s: %d bytes, want %d (equal: false)", key, len(got), len(want))
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}
