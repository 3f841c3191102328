package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"
)

const (
	defaultPartSize = 8 << 20
	minPartSize     = 5 << 20 // S3's minimum for every part but the last
	defaultRegion   = "us-east-1"

	// abortTimeout bounds the AbortMultipartUpload the transfer manager sends after a failed
	// multipart upload. It runs on a fresh context so that a cancelled Commit still cleans up
	// the server side, without holding up shutdown for long.
	abortTimeout = 10 * time.Second
)

// s3Store keeps each key as the object prefix + "/" + key in one bucket.
type s3Store struct {
	client   *s3.Client
	tm       *transfermanager.Client
	bucket   string
	root     string // the key prefix with a trailing slash, or "" for the whole bucket
	base     string // s3://bucket[/prefix]
	spoolDir string

	listPageSize int32 // 0: the server's default (1,000); tests lower it to exercise paging
}

var _ Store = (*s3Store)(nil)

func openS3(ctx context.Context, loc Location, o Options) (*s3Store, error) {
	base := loc.String()
	bad := func(format string, args ...any) error {
		return &Error{Op: "open store", URL: base, Err: fmt.Errorf(format, args...), permanent: true}
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, bad("endpoint %q: want http://host[:port] or https://host[:port]", o.Endpoint)
		}
	}
	if (o.AccessKeyID == "") != (o.SecretAccessKey == "") {
		return nil, bad("set both the access key ID and the secret access key, or neither to use the AWS credential chain")
	}
	if o.SessionToken != "" && o.AccessKeyID == "" {
		return nil, bad("a session token needs an access key ID and a secret access key")
	}
	if o.PartSize != 0 && o.PartSize < minPartSize {
		return nil, bad("part size %d is below S3's minimum of %d bytes (5 MiB)", o.PartSize, minPartSize)
	}
	if o.Concurrency < 0 {
		return nil, bad("concurrency %d is negative", o.Concurrency)
	}
	spoolDir := o.SpoolDir
	if spoolDir == "" {
		spoolDir = os.TempDir()
	}
	if info, err := os.Stat(spoolDir); err != nil || !info.IsDir() {
		return nil, bad("spool directory %q is not a directory", spoolDir)
	}

	var lo []func(*config.LoadOptions) error
	if o.Region != "" {
		lo = append(lo, config.WithRegion(o.Region))
	}
	if o.AccessKeyID != "" {
		lo = append(lo, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, o.SessionToken)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, bad("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = defaultRegion
	}
	// The SDK's default logger writes to stderr. Every failure reaches the caller as an error,
	// so the store stays silent rather than log around the injected logger.
	cfg.Logger = logging.Nop{}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
	})
	partSize := o.PartSize
	if partSize == 0 {
		partSize = defaultPartSize
	}
	tm := transfermanager.New(client, func(to *transfermanager.Options) {
		to.PartSizeBytes = partSize
		// One threshold for both: a file of up to one part goes up in a single PutObject,
		// anything larger in parts. (The transfer manager reads up to the threshold into
		// memory before deciding, so a larger threshold would only cost memory.)
		to.MultipartUploadThreshold = partSize
		to.Concurrency = o.Concurrency
		to.FailTimeout = abortTimeout
	})
	root := ""
	if loc.Prefix != "" {
		root = loc.Prefix + "/"
	}
	return &s3Store{client: client, tm: tm, bucket: loc.Bucket, root: root, base: base, spoolDir: spoolDir}, nil
}

func (s *s3Store) URL(key string) string { return s.base + "/" + key }

func (s *s3Store) Create(ctx context.Context, key string) (Writer, error) {
	if err := checkKey(key); err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, wrap("create", s.URL(key), err)
	}
	f, err := os.CreateTemp(s.spoolDir, "tideline-spool-*")
	if err != nil {
		return nil, wrap("create", s.URL(key), fmt.Errorf("spool file: %w", err))
	}
	// Unlink the spool at once where the OS allows it (POSIX): the open descriptor keeps the
	// data, and a crash leaves nothing behind. Where it fails (Windows), discard removes it.
	unlinked := os.Remove(f.Name()) == nil
	return &s3Writer{ctx: ctx, s: s, key: key, f: f, unlinked: unlinked}, nil
}

type s3Writer struct {
	ctx      context.Context
	s        *s3Store
	key      string
	f        *os.File // the spool; nil once committed or aborted
	unlinked bool
	done     bool
}

var _ Writer = (*s3Writer)(nil)

func (w *s3Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, wrap("write", w.s.URL(w.key), ErrClosed)
	}
	n, err := w.f.Write(p)
	if err != nil {
		return n, wrap("write", w.s.URL(w.key), fmt.Errorf("spool file: %w", err))
	}
	return n, nil
}

func (w *s3Writer) Commit() error {
	if w.done {
		return wrap("commit", w.s.URL(w.key), ErrClosed)
	}
	w.done = true
	defer w.discard()
	if err := w.ctx.Err(); err != nil {
		return wrap("commit", w.s.URL(w.key), err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return wrap("commit", w.s.URL(w.key), fmt.Errorf("spool file: %w", err))
	}
	// The spool is an io.Seeker, so the transfer manager knows the size up front and picks
	// a part size that fits the 10,000-part limit. The object appears only when the single
	// PutObject or the CompleteMultipartUpload succeeds; on a failed multipart upload the
	// transfer manager aborts it.
	_, err := w.s.tm.UploadObject(w.ctx, &transfermanager.UploadObjectInput{
		Bucket: aws.String(w.s.bucket),
		Key:    aws.String(w.s.root + w.key),
		Body:   w.f,
	})
	if err != nil {
		return w.s.wrap("commit", w.s.URL(w.key), err)
	}
	return nil
}

func (w *s3Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if err := w.discard(); err != nil {
		return wrap("abort", w.s.URL(w.key), err)
	}
	return nil
}

// discard closes (and, if it is still linked, removes) the spool. Nothing exists on the server
// before Commit, so there is nothing to abort there.
func (w *s3Writer) discard() error {
	if w.f == nil {
		return nil
	}
	f := w.f
	w.f = nil
	err := f.Close()
	if !w.unlinked {
		if rerr := os.Remove(f.Name()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	return err
}

func (s *s3Store) List(ctx context.Context, prefix string) ([]Object, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, wrap("list", s.URL(prefix), err)
	}
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(s.root + prefix),
	}
	if s.listPageSize > 0 {
		in.MaxKeys = aws.Int32(s.listPageSize)
	}
	var objs []Object
	for p := s3.NewListObjectsV2Paginator(s.client, in); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.wrap("list", s.URL(prefix), err)
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), s.root)
			// Objects written by other tools may not be valid keys ("dir/" folder markers,
			// "a//b"); leave them out so that every listed key can be opened and deleted.
			if checkKey(key) != nil {
				continue
			}
			objs = append(objs, Object{Key: key, Size: aws.ToInt64(o.Size)})
		}
	}
	// S3 lists in UTF-8 byte order already; S3-compatible servers are not all as careful.
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
	return objs, nil
}

func (s *s3Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, wrap("open", s.URL(key), err)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.root + key),
	})
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			err = notExist{err}
		}
		return nil, s.wrap("open", s.URL(key), err)
	}
	return out.Body, nil
}

func (s *s3Store) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return wrap("delete", s.URL(key), err)
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.root + key),
	})
	return s.wrap("delete", s.URL(key), err)
}

// wrap is the package's wrap for an error from an S3 call, whose hint names the bucket.
func (s *s3Store) wrap(op, url string, err error) error {
	return wrapBucket(op, url, s.bucket, err)
}

// notExist marks an S3 "no such key" so that errors.Is(err, fs.ErrNotExist) holds, as it does
// for the file store.
type notExist struct{ err error }

func (e notExist) Error() string        { return e.err.Error() }
func (e notExist) Unwrap() error        { return e.err }
func (e notExist) Is(target error) bool { return target == os.ErrNotExist }
