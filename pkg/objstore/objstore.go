// Package objstore is the storage that file-producing sinks (the Parquet change log) write to: a
// local directory (file:///dir) or an S3 bucket with an optional prefix (s3://bucket/prefix).
//
// A file becomes visible under its key only when its Writer commits, and committing the same key
// again replaces the file atomically, so readers (DuckDB's read_parquet, a listing sweeper) never
// see a half-written file:
//
//   - file: the Writer writes a temporary file in the key's own directory; Commit fsyncs it,
//     renames it over the key and fsyncs the directories up to the store root.
//   - s3: the Writer spools to an unlinked temporary file on local disk and Commit uploads it with
//     the transfer manager (one PutObject below the multipart threshold, a multipart upload
//     above it). S3 makes an object visible only when its PutObject or CompleteMultipartUpload
//     succeeds, and a failed multipart upload is aborted by the transfer manager.
//
// Why a spool rather than streaming each Write into an open multipart upload: a Parquet file is
// written over minutes and can be 128 MiB or more. With a spool the writes never wait on the
// network, no multipart upload stays open on the server while the file grows (so a crash leaves
// nothing to clean up there, and the spool is already unlinked), the object size is known before
// the upload so the part size always fits S3's 10,000-part limit, and Abort before Commit is a
// purely local operation. The cost is local disk equal to the files being written (see
// Options.SpoolDir) and an upload that starts at Commit instead of overlapping the writes. Memory
// stays bounded either way: the transfer manager reads the spool into at most
// (Concurrency+1) × PartSize bytes of part buffers, never the whole file.
//
// Errors: every error names the operation and the URL it concerned. IsPermanent tells a
// misconfiguration (missing bucket, access denied, bad key) from a failure worth retrying
// (network, 5xx, throttling); a missing key satisfies errors.Is(err, fs.ErrNotExist) in both
// stores.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Store is a flat namespace of keys under one root (a directory or a bucket prefix).
//
// Keys are relative, slash-separated paths such as "public.items/date=2026-11-22/x.parquet": no
// leading or trailing slash, no empty, "." or ".." segment, no backslash or NUL, and no segment
// starting with TempPrefix. The same key is valid in every store.
//
// A Store is safe for concurrent use by many goroutines. Writers for different keys are
// independent; two Writers for the same key both succeed and the last Commit wins. Stores hold no
// goroutines and need no Close.
type Store interface {
	// Create returns a Writer for key. Nothing is visible at key (nor in List) until the Writer's
	// Commit returns nil; an existing file at key stays readable until then and is replaced
	// atomically. ctx governs the whole write, including the upload inside Commit: once it is
	// done, Commit fails and publishes nothing (an upload in progress stops and is aborted on
	// the server). The caller must end every Writer with Commit or Abort (defer w.Abort() is
	// the idiom; it is a no-op after a Commit).
	Create(ctx context.Context, key string) (Writer, error)

	// List returns the committed files whose key starts with prefix (a plain string prefix, as in
	// S3, not a directory: "a/b" matches "a/b/c" and "a/bc"), sorted by key in byte order, with
	// keys relative to the store root. It never returns in-progress writes. An empty prefix lists
	// everything. On S3 it follows every page of the listing.
	List(ctx context.Context, prefix string) ([]Object, error)

	// Open returns the committed file at key for reading; the caller closes it. The reader is
	// tied to ctx. A missing key gives an error satisfying errors.Is(err, fs.ErrNotExist).
	Open(ctx context.Context, key string) (io.ReadCloser, error)

	// Delete removes the file at key. Deleting a missing key is not an error (as in S3), so a
	// retried Delete is harmless. Directories left empty by the file store are kept.
	Delete(ctx context.Context, key string) error

	// URL returns where key lives, for logs and for readers such as DuckDB's read_parquet:
	// file:///dir/key or s3://bucket/prefix/key. The key is not percent-encoded.
	URL(key string) string
}

// Writer receives one file's bytes. It is used by one goroutine at a time. To stop a Commit in
// progress, cancel the context given to Create.
type Writer interface {
	// Write appends to the pending file. After a Write error the caller should Abort.
	io.Writer

	// Commit makes the written bytes visible at the key, replacing any previous file, and
	// returns only when that is durable (fsynced file and directories, or a completed S3
	// upload). The Writer is finished afterwards whatever the outcome, and its temporary files
	// are gone. If Commit fails, the caller treats the file as not written and, for a transient
	// error, writes it again through a new Writer. (The key holds either the old file or the
	// new one, never a mix: the one case where a failed Commit leaves the new file visible is
	// a failed directory fsync after the file store's rename, which the rewrite repeats.)
	Commit() error

	// Abort discards the pending file: the key keeps its previous content (or stays absent) and
	// temporary files are removed. It is idempotent and returns nil after a successful Commit,
	// so it is safe in a defer.
	Abort() error
}

// Object is one committed file.
type Object struct {
	Key  string // relative to the store root
	Size int64  // bytes
}

// Options configure an S3 store; a file store ignores them. Zero values take the defaults.
type Options struct {
	// Endpoint is the S3 API base URL for S3-compatible servers (http://127.0.0.1:7070). Empty
	// uses AWS's endpoint for the region.
	Endpoint string
	// Region signs requests. Empty takes the AWS environment/config chain (AWS_REGION,
	// ~/.aws/config), then us-east-1.
	Region string
	// AccessKeyID, SecretAccessKey and SessionToken set static credentials. With AccessKeyID
	// empty, credentials come from the AWS chain (environment, shared files, SSO, IMDS, ...).
	AccessKeyID, SecretAccessKey, SessionToken string
	// PathStyle addresses the bucket in the path (endpoint/bucket/key) instead of the host name;
	// most S3-compatible servers need it.
	PathStyle bool

	// SpoolDir is where Writers spool files before Commit uploads them; it needs room for every
	// file being written at once. Empty means os.TempDir(). Where /tmp is a tmpfs (memory), as
	// in many containers, point it at a disk.
	SpoolDir string
	// PartSize is the multipart part size in bytes, and also the size above which an upload is
	// multipart. Empty means 8 MiB; S3 requires at least 5 MiB. It grows automatically when a
	// file would need more than 10,000 parts.
	PartSize int64
	// Concurrency is the number of parts one Commit uploads in parallel. Empty means 5. One
	// Commit holds up to (Concurrency+1) × PartSize bytes of buffers.
	Concurrency int
}

// TempPrefix starts the name of every temporary file the file store writes next to its keys.
// Keys may not have a segment starting with it, and List skips such files.
const TempPrefix = ".tideline-tmp-"

// Sentinel errors. Each is returned wrapped with the offending value; errors.Is matches them.
var (
	// ErrInvalidURL: the store URL is malformed or has an unsupported scheme.
	ErrInvalidURL = errors.New("invalid store URL")
	// ErrInvalidKey: a key or list prefix does not follow the key rules of Store.
	ErrInvalidKey = errors.New("invalid key")
	// ErrClosed: the Writer was already committed or aborted.
	ErrClosed = errors.New("writer already committed or aborted")
)

// Location is a parsed store URL.
type Location struct {
	Scheme string // "file" or "s3"
	Dir    string // file: the absolute, cleaned directory
	Bucket string // s3: the bucket
	Prefix string // s3: the key prefix without a trailing slash, possibly empty
}

// Parse checks a store URL without touching the file system or the network, so configuration
// validation can report a bad path before anything starts. Accepted forms:
//
//	file:///absolute/dir
//	s3://bucket
//	s3://bucket/prefix/path
func Parse(raw string) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("%w %q: %s", ErrInvalidURL, raw, fmt.Sprintf(format, args...))
	}
	if raw == "" {
		return bad("empty; want file:///absolute/dir or s3://bucket/prefix")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("%v", err)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return bad("a query (?...) or fragment (#...) is not allowed")
	}
	if u.User != nil {
		return bad("user info (user@) is not allowed; put S3 credentials in the sink's options or the AWS environment")
	}
	switch u.Scheme {
	case "file":
		if u.Opaque != "" {
			return bad("relative path %q; want an absolute path, file:///absolute/dir (three slashes)", u.Opaque)
		}
		if u.Host != "" && u.Host != "localhost" {
			return bad("host %q is not allowed in a file URL; want file:///absolute/dir (three slashes)", u.Host)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return bad("missing directory; want file:///absolute/dir")
		}
		return Location{Scheme: "file", Dir: filepath.Clean(filepath.FromSlash(u.Path))}, nil
	case "s3":
		if u.Opaque != "" || u.Host == "" {
			return bad("missing bucket; want s3://bucket/prefix")
		}
		if u.Port() != "" {
			return bad("bucket %q has a port; set the endpoint in the sink's options instead", u.Host)
		}
		if err := checkBucket(u.Host); err != nil {
			return bad("%v", err)
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		prefix = strings.TrimSuffix(prefix, "/")
		if prefix != "" {
			if err := checkKey(prefix); err != nil {
				return bad("prefix: %v", err)
			}
		}
		return Location{Scheme: "s3", Bucket: u.Host, Prefix: prefix}, nil
	case "":
		return bad("missing scheme; want file:///absolute/dir or s3://bucket/prefix")
	default:
		return bad("unsupported scheme %q; want file or s3", u.Scheme)
	}
}

// String returns the canonical URL of the location.
func (l Location) String() string {
	switch l.Scheme {
	case "file":
		return "file://" + filepath.ToSlash(l.Dir)
	case "s3":
		if l.Prefix == "" {
			return "s3://" + l.Bucket
		}
		return "s3://" + l.Bucket + "/" + l.Prefix
	}
	return ""
}

// Open parses url (see Parse) and returns its store. A file store creates its directory if it is
// missing. An S3 store loads the AWS configuration but makes no request: a missing bucket or
// wrong credentials surface, as permanent errors, at the first operation.
func Open(ctx context.Context, url string, o Options) (Store, error) {
	loc, err := Parse(url)
	if err != nil {
		return nil, err
	}
	switch loc.Scheme {
	case "file":
		return openFile(loc)
	default:
		return openS3(ctx, loc, o)
	}
}

// checkBucket accepts the characters S3 and S3-compatible servers allow in bucket names; the
// server checks the finer rules.
func checkBucket(b string) error {
	if len(b) > 255 {
		return fmt.Errorf("bucket name is longer than 255 bytes")
	}
	for _, r := range b {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		default:
			return fmt.Errorf("bucket %q has the character %q; want letters, digits, '.', '-' or '_'", b, r)
		}
	}
	return nil
}

// checkKey enforces the key rules documented on Store.
func checkKey(key string) error {
	bad := func(why string) error { return fmt.Errorf("%w %q: %s", ErrInvalidKey, key, why) }
	switch {
	case key == "":
		return bad("empty")
	case !utf8.ValidString(key):
		return bad("not valid UTF-8")
	case strings.ContainsAny(key, "\\\x00"):
		return bad("contains a backslash or NUL")
	case strings.HasPrefix(key, "/"):
		return bad("starts with '/'; keys are relative to the store root")
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch {
		case seg == "":
			return bad("has an empty segment (\"//\" or a trailing '/')")
		case seg == "." || seg == "..":
			return bad("has a '.' or '..' segment")
		case strings.HasPrefix(seg, TempPrefix):
			return bad("a segment starts with " + TempPrefix + ", reserved for temporary files")
		}
	}
	return nil
}

// checkPrefix accepts any string prefix that cannot reach outside the store root: a list
// prefix may end inside a segment or with '/', but may not climb with "..".
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	bad := func(why string) error { return fmt.Errorf("%w prefix %q: %s", ErrInvalidKey, prefix, why) }
	switch {
	case !utf8.ValidString(prefix):
		return bad("not valid UTF-8")
	case strings.ContainsAny(prefix, "\\\x00"):
		return bad("contains a backslash or NUL")
	case strings.HasPrefix(prefix, "/"):
		return bad("starts with '/'; prefixes are relative to the store root")
	}
	// The last segment is a partial name ("a/.." may start "a/..x"); only whole directory
	// segments can climb.
	dirs := strings.Split(prefix, "/")
	for _, seg := range dirs[:len(dirs)-1] {
		if seg == "." || seg == ".." {
			return bad("has a '.' or '..' segment")
		}
	}
	return nil
}
