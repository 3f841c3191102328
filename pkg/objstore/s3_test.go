package objstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/tideline-cdc/tideline/pkg/objstore"
)

// isolateAWS keeps the developer's AWS files and environment out of the tests.
func isolateAWS(t *testing.T) {
	none := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_CONFIG_FILE", none)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// fakeS3 starts an in-process gofakes3 server (in-memory backend) and returns its endpoint.
func fakeS3(t *testing.T, buckets ...string) string {
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	return srv.URL
}

func s3Options(t *testing.T, endpoint string) objstore.Options {
	return objstore.Options{
		Endpoint:        endpoint,
		Region:          "us-east-1",
		AccessKeyID:     "tideline",
		SecretAccessKey: "tideline-secret",
		PathStyle:       true,
		SpoolDir:        t.TempDir(),
		PartSize:        5 << 20, // S3's minimum, so the large-file check uploads in parts
	}
}

// rawS3 is a plain SDK client on the same server, to look behind the store's back.
func rawS3(o objstore.Options) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(o.Endpoint),
		Region:       o.Region,
		Credentials:  credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, ""),
		UsePathStyle: true,
	})
}

// newS3Case opens a store on bucket/prefix of an S3 server and reports as pending both the
// server's open multipart uploads and the spool files left on local disk.
func newS3Case(t *testing.T, o objstore.Options, bucket, prefix string) storeCase {
	root := "s3://" + bucket + "/" + prefix
	s, err := objstore.Open(context.Background(), root, o)
	if err != nil {
		t.Fatal(err)
	}
	objstore.SetListPageSize(s, 2) // every listing in the checks spans pages
	raw := rawS3(o)
	return storeCase{store: s, root: root, pending: func(t *testing.T) int {
		out, err := raw.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchUpload" {
			// gofakes3 answers so for a bucket that never had a multipart upload.
			out, err = &s3.ListMultipartUploadsOutput{}, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		spools, err := os.ReadDir(o.SpoolDir)
		if err != nil {
			t.Fatal(err)
		}
		return len(out.Uploads) + len(spools)
	}}
}

func TestS3Store(t *testing.T) {
	isolateAWS(t)
	n := 0
	runStoreChecks(t, func(t *testing.T) storeCase {
		// One server per check; a distinct prefix in a shared bucket would do too, but a
		// fresh server also proves that nothing else (a stray upload) is left behind.
		endpoint := fakeS3(t, "lake")
		n++
		return newS3Case(t, s3Options(t, endpoint), "lake", fmt.Sprintf("cdc/run%d", n))
	})
}

func TestS3StoreScope(t *testing.T) {
	isolateAWS(t)
	ctx := context.Background()
	o := s3Options(t, fakeS3(t, "lake"))
	raw := rawS3(o)
	putRaw := func(key, body string) {
		t.Helper()
		_, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("lake"), Key: aws.String(key), Body: strings.NewReader(body)})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Objects outside the store's prefix, or not valid keys, are not the store's.
	putRaw("cdc", "x")
	putRaw("cdcx/a", "x")
	putRaw("cdc/", "") // a console "folder"
	putRaw("cdc/dir/", "")
	putRaw("cdc/a//b", "x")
	putRaw("cdc/ok", "yes")

	s, err := objstore.Open(ctx, "s3://lake/cdc", o)
	if err != nil {
		t.Fatal(err)
	}
	wantList(t, s, "", objstore.Object{Key: "ok", Size: 3})
	wantContent(t, s, "ok", []byte("yes"))

	// The spool is unlinked as soon as it is made: a crash mid-write leaves no file behind.
	w := create(t, s, "new")
	mustWrite(t, w, []byte("pending"))
	if spools, _ := os.ReadDir(o.SpoolDir); len(spools) != 0 {
		t.Errorf("spool directory holds %d entries while writing, want 0 (unlinked)", len(spools))
	}

	// A store on the whole bucket sees everything that is a valid key.
	whole, err := objstore.Open(ctx, "s3://lake", o)
	if err != nil {
		t.Fatal(err)
	}
	wantList(t, whole, "", objstore.Object{Key: "cdc", Size: 1}, objstore.Object{Key: "cdc/ok", Size: 3},
		objstore.Object{Key: "cdcx/a", Size: 1})
	if got, want := whole.URL("a/b"), "s3://lake/a/b"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
}

func TestS3MissingBucketIsPermanent(t *testing.T) {
	isolateAWS(t)
	ctx := context.Background()
	s, err := objstore.Open(ctx, "s3://no-such-bucket/cdc", s3Options(t, fakeS3(t, "lake")))
	if err != nil {
		t.Fatal(err)
	}

	w := create(t, s, "t/x.parquet")
	mustWrite(t, w, []byte("data"))
	err = w.Commit()
	checkPermanent(t, "Commit", err, "s3://no-such-bucket/cdc/t/x.parquet", `bucket "no-such-bucket" does not exist`)

	_, err = s.List(ctx, "t/")
	checkPermanent(t, "List", err, "s3://no-such-bucket/cdc/t/", `bucket "no-such-bucket" does not exist`)

	_, err = s.Open(ctx, "t/x.parquet")
	checkPermanent(t, "Open", err, "s3://no-such-bucket/cdc/t/x.parquet", `bucket "no-such-bucket" does not exist`)
}

func checkPermanent(t *testing.T, op string, err error, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", op)
	}
	if !objstore.IsPermanent(err) {
		t.Errorf("%s: IsPermanent(%v) = false, want true", op, err)
	}
	for _, m := range append(mentions, "permanent") {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("%s: error %q does not mention %q", op, err, m)
		}
	}
	var e *objstore.Error
	if !errors.As(err, &e) {
		t.Errorf("%s: %T is not an *objstore.Error", op, err)
	}
}

func TestS3DeadEndpointIsTransient(t *testing.T) {
	isolateAWS(t)
	ctx := context.Background()
	// A port that was just free: connections are refused, as when the server is down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(ctx, "s3://lake/cdc", s3Options(t, endpoint))
	if err != nil {
		t.Fatal(err)
	}

	_, err = s.List(ctx, "")
	if err == nil || objstore.IsPermanent(err) {
		t.Fatalf("List on a dead endpoint: err = %v, want a transient error", err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "s3://lake/cdc/") {
		t.Errorf("List error %q: want connection refused, naming the store", err)
	}

	w := create(t, s, "x")
	mustWrite(t, w, []byte("data"))
	if err := w.Commit(); err == nil || objstore.IsPermanent(err) {
		t.Fatalf("Commit on a dead endpoint: err = %v, want a transient error", err)
	}
}

func TestS3ServerErrorIsTransient(t *testing.T) {
	isolateAWS(t)
	// A gateway that answers every request with 503 SlowDown, as S3 does when throttling.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
	}))
	t.Cleanup(srv.Close)
	s, err := objstore.Open(context.Background(), "s3://lake", s3Options(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.List(context.Background(), "")
	if err == nil || objstore.IsPermanent(err) || !strings.Contains(err.Error(), "SlowDown") {
		t.Fatalf("List against a throttling server: err = %v, want a transient SlowDown", err)
	}
}

func TestOpenS3BadOptions(t *testing.T) {
	isolateAWS(t)
	cases := []struct {
		name    string
		mod     func(*objstore.Options)
		mention string
	}{
		{"endpoint without scheme", func(o *objstore.Options) { o.Endpoint = "localhost:9000" }, `endpoint "localhost:9000"`},
		{"secret without key ID", func(o *objstore.Options) { o.AccessKeyID = "" }, "access key ID"},
		{"token without keys", func(o *objstore.Options) { o.AccessKeyID, o.SecretAccessKey, o.SessionToken = "", "", "t" }, "session token"},
		{"small parts", func(o *objstore.Options) { o.PartSize = 1 << 20 }, "part size"},
		{"missing spool directory", func(o *objstore.Options) { o.SpoolDir = "/nonexistent/spool" }, `"/nonexistent/spool"`},
	}
	for _, c := range cases {
		o := s3Options(t, "http://127.0.0.1:1")
		c.mod(&o)
		_, err := objstore.Open(context.Background(), "s3://lake/p", o)
		if err == nil || !objstore.IsPermanent(err) || !strings.Contains(err.Error(), c.mention) ||
			!strings.Contains(err.Error(), "s3://lake/p") {
			t.Errorf("%s: err = %v, want a permanent error naming %s and the store", c.name, err, c.mention)
		}
	}
}

// TestIsPermanent classifies the errors the AWS SDK returns, built the way its deserializers
// build them: an API error inside an HTTP response error.
func TestIsPermanent(t *testing.T) {
	api := func(status int, code string) error {
		resp := &smithyhttp.Response{Response: &http.Response{StatusCode: status}}
		var inner error = &smithy.GenericAPIError{Code: code, Message: "m"}
		if code == "" {
			inner = errors.New("no body")
		}
		return &smithy.OperationError{ServiceID: "S3", OperationName: "PutObject",
			Err: &smithyhttp.ResponseError{Response: resp, Err: inner}}
	}
	cases := []struct {
		err       error
		permanent bool
	}{
		{api(404, "NoSuchBucket"), true},
		{api(403, "AccessDenied"), true},
		{api(403, "InvalidAccessKeyId"), true},
		{api(403, "SignatureDoesNotMatch"), true},
		{api(301, "PermanentRedirect"), true},
		{api(400, "AuthorizationHeaderMalformed"), true},
		{api(403, ""), true},
		{api(500, "InternalError"), false},
		{api(503, "SlowDown"), false},
		{api(503, ""), false},
		{api(429, "TooManyRequests"), false},
		{api(400, "RequestTimeout"), false},
		{api(400, "ExpiredToken"), false},
		{api(403, "RequestTimeTooSkewed"), false},
		{api(409, "OperationAborted"), false},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, false},
		{syscall.ENOSPC, false},
		{syscall.EACCES, true},
		{fmt.Errorf("x: %w", objstore.ErrInvalidKey), true},
		{nil, false},
	}
	for _, c := range cases {
		if got := objstore.IsPermanent(c.err); got != c.permanent {
			t.Errorf("IsPermanent(%v) = %v, want %v", c.err, got, c.permanent)
		}
	}
}

// TestS3FailedUploadLeavesNothing makes the server refuse one part of a multipart upload: the
// Commit fails as transient, the transfer manager aborts the upload, and neither the object nor
// an open upload remains. (It also shows that a file over PartSize takes the multipart path:
// a single PutObject would not meet the injected failure and the Commit would succeed.)
func TestS3FailedUploadLeavesNothing(t *testing.T) {
	isolateAWS(t)
	backend := s3mem.New()
	if err := backend.CreateBucket("lake"); err != nil {
		t.Fatal(err)
	}
	fake := gofakes3.New(backend).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "2" {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
			return
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	c := newS3Case(t, s3Options(t, srv.URL), "lake", "cdc")
	w := create(t, c.store, "big")
	mustWrite(t, w, randomBytes(11<<20))
	err := w.Commit()
	if err == nil || objstore.IsPermanent(err) || !strings.Contains(err.Error(), "s3://lake/cdc/big") {
		t.Fatalf("Commit with a failing part: err = %v, want a transient error naming the key", err)
	}
	if objs := list(t, c.store, ""); len(objs) != 0 {
		t.Errorf("List = %v, want nothing", objs)
	}
	if n := c.pending(t); n != 0 {
		t.Errorf("%d multipart uploads or spools left, want 0", n)
	}
}
