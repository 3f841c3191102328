package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// fileStore keeps each key as a file under root, with the key's slashes as directories.
type fileStore struct {
	root string // absolute, cleaned
	base string // root as a file:// URL, without a trailing slash
}

var _ Store = (*fileStore)(nil)

func openFile(loc Location) (*fileStore, error) {
	base := strings.TrimSuffix(loc.String(), "/")
	if err := os.MkdirAll(loc.Dir, 0o755); err != nil {
		return nil, &Error{Op: "open store", URL: loc.String(), Err: err, permanent: true}
	}
	return &fileStore{root: loc.Dir, base: base}, nil
}

func (s *fileStore) URL(key string) string { return s.base + "/" + key }

func (s *fileStore) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

func (s *fileStore) Create(ctx context.Context, key string) (Writer, error) {
	if err := checkKey(key); err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	dst := s.path(key)
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	// The temporary file lives in the key's own directory so that Commit's rename stays within
	// one file system and is atomic; its name starts with TempPrefix so List skips it.
	f, err := os.CreateTemp(dir, TempPrefix+filepath.Base(dst)+"-*")
	if err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	return &fileWriter{ctx: ctx, s: s, key: key, dst: dst, f: f}, nil
}

type fileWriter struct {
	ctx  context.Context
	s    *fileStore
	key  string
	dst  string
	f    *os.File // nil once committed or aborted
	done bool
}

var _ Writer = (*fileWriter)(nil)

func (w *fileWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, wrap("write", w.s.URL(w.key), ErrClosed)
	}
	n, err := w.f.Write(p)
	if err != nil {
		return n, wrap("write", w.s.URL(w.key), err)
	}
	return n, nil
}

func (w *fileWriter) Commit() error {
	if w.done {
		return wrap("commit", w.s.URL(w.key), ErrClosed)
	}
	w.done = true
	if err := w.commit(); err != nil {
		w.discard()
		return wrap("commit", w.s.URL(w.key), err)
	}
	return nil
}

// commit publishes the temporary file. The order matters: the data must be on disk before the
// rename makes it reachable (else a crash could leave a visible but truncated file), and the
// directory must be synced after the rename (else a crash could bring back the old file, or
// none at all).
func (w *fileWriter) commit() error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	f := w.f
	// CreateTemp makes the file 0600; committed files are read by other tools (DuckDB) that
	// may run as another user, like files from os.Create under the usual umask.
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), w.dst); err != nil {
		return err
	}
	w.f = nil
	// Sync the key's directory and every directory above it up to the root: Create may have
	// made some of them, and a directory entry is durable only when its parent is synced.
	for dir := filepath.Dir(w.dst); ; dir = filepath.Dir(dir) {
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("renamed into place, but syncing directory %s: %w", dir, err)
		}
		if dir == w.s.root || len(dir) <= len(w.s.root) {
			return nil
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (w *fileWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if err := w.discard(); err != nil {
		return wrap("abort", w.s.URL(w.key), err)
	}
	return nil
}

// discard closes and removes the temporary file, if it was not renamed into place.
func (w *fileWriter) discard() error {
	if w.f == nil {
		return nil
	}
	name := w.f.Name()
	_ = w.f.Close() // may already be closed by a failed commit; the removal is what matters
	w.f = nil
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (s *fileStore) List(ctx context.Context, prefix string) ([]Object, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, wrap("list", s.URL(prefix), err)
	}
	// Walk only the deepest directory the prefix names in full: "a/b/c" starts at root/a/b.
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = s.path(prefix[:i])
	}
	var objs []Object
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // the start directory is absent (no keys) or vanished mid-walk
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == s.root {
			return nil
		}
		rel, err := filepath.Rel(s.root, path)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if path != start && !strings.HasPrefix(key+"/", prefix) {
				return fs.SkipDir
			}
			return nil
		}
		// Skip in-progress writes (and leftovers of crashed ones), symlinks and other
		// non-regular files.
		if strings.HasPrefix(d.Name(), TempPrefix) || !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted since the directory was read
			}
			return err
		}
		objs = append(objs, Object{Key: key, Size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, wrap("list", s.URL(prefix), err)
	}
	// WalkDir orders by name within each directory, which is not byte order of whole keys
	// ("a/b" comes before "a.b" in the walk, after it in byte order).
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
	return objs, nil
}

func (s *fileStore) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, wrap("open", s.URL(key), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, wrap("open", s.URL(key), err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, wrap("open", s.URL(key), err)
	}
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		_ = f.Close()
		if err == nil {
			err = fmt.Errorf("%w: not a regular file", fs.ErrNotExist)
		}
		return nil, wrap("open", s.URL(key), err)
	}
	return f, nil
}

func (s *fileStore) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return wrap("delete", s.URL(key), err)
	}
	if err := ctx.Err(); err != nil {
		return wrap("delete", s.URL(key), err)
	}
	path := s.path(key)
	// A key that names a directory of other keys is not a file: nothing to delete, and
	// os.Remove would otherwise remove the directory if it happened to be empty.
	if info, err := os.Lstat(path); err == nil && info.IsDir() {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return wrap("delete", s.URL(key), err)
	}
	return nil
}
