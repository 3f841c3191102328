package objstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"syscall"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Error is the error of one store operation. Every error a Store or Writer returns is an *Error,
// so errors.As finds the operation and URL.
type Error struct {
	Op  string // "create", "commit", "list", "open", "delete", ...
	URL string // the key's URL (or the store's, for list)
	Err error  // the cause, from the file system or the AWS SDK

	permanent bool
	hint      string // what a permanent S3 error means in terms of this store's settings
}

func (e *Error) Error() string {
	if e.permanent {
		if e.hint != "" {
			return fmt.Sprintf("objstore: %s %s: permanent error: %s: %v", e.Op, e.URL, e.hint, e.Err)
		}
		return fmt.Sprintf("objstore: %s %s: permanent error: %v", e.Op, e.URL, e.Err)
	}
	return fmt.Sprintf("objstore: %s %s: %v", e.Op, e.URL, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err will recur however often the operation is retried: a missing
// bucket, denied access, rejected credentials, a bucket in another region, an invalid key or URL,
// a missing key, a local permission problem. Everything else (network errors, timeouts, HTTP 5xx,
// throttling, a full disk, cancellation) is transient. The sink runtime retries transient errors
// without end and stops on permanent ones.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.permanent
	}
	p, _ := classify(err)
	return p
}

// wrap makes the *Error for op on url, classifying err once.
func wrap(op, url string, err error) error {
	return wrapBucket(op, url, "", err)
}

// wrapBucket is wrap for an S3 operation on bucket, which the hint names.
func wrapBucket(op, url, bucket string, err error) error {
	if err == nil {
		return nil
	}
	p, hint := classify(err)
	hint = strings.ReplaceAll(hint, "{bucket}", strconv.Quote(bucket))
	return &Error{Op: op, URL: url, Err: err, permanent: p, hint: hint}
}

// transientCodes are S3 error codes sent with a 4xx status that still succeed on a later try.
// (Throttling codes come with 503 or 429 and are transient by status.)
var transientCodes = map[string]bool{
	"RequestTimeout":           true, // 400: the client was too slow sending the body
	"RequestTimeTooSkewed":     true, // 403: the SDK corrects its clock offset and retries
	"ExpiredToken":             true, // 400: refreshed credentials fix it
	"TokenRefreshRequired":     true,
	"OperationAborted":         true, // 409: a conflicting operation on the bucket is in progress
	"NoSuchUpload":             true, // the multipart upload was aborted under us; a new one works
	"SlowDown":                 true,
	"Throttling":               true,
	"ThrottlingException":      true,
	"RequestLimitExceeded":     true,
	"TooManyRequests":          true,
	"TooManyRequestsException": true,
}

// hints explain permanent S3 error codes in terms of the sink's configuration; {bucket} is
// replaced by the quoted bucket name.
var hints = map[string]string{
	"NoSuchBucket":                 "bucket {bucket} does not exist",
	"AccessDenied":                 "access to bucket {bucket} denied: check the credentials and the bucket policy",
	"AllAccessDisabled":            "all access to bucket {bucket} is disabled",
	"InvalidAccessKeyId":           "the access key ID is not known to the server",
	"SignatureDoesNotMatch":        "the secret access key does not match the access key ID",
	"InvalidToken":                 "the session token is invalid",
	"PermanentRedirect":            "bucket {bucket} is in another region: set the region",
	"AuthorizationHeaderMalformed": "the region does not match bucket {bucket}'s: set the region",
	"InvalidBucketName":            "the bucket name {bucket} is invalid",
	"NoSuchKey":                    "the key does not exist",
	"EntityTooLarge":               "the file is larger than the server accepts",
}

// classify tells whether err is permanent and, for S3 errors, what it means.
func classify(err error) (permanent bool, hint string) {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false, ""
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrInvalidURL), errors.Is(err, ErrClosed):
		return true, ""
	}

	var apiErr smithy.APIError
	var respErr *smithyhttp.ResponseError
	hasAPI := errors.As(err, &apiErr)
	if errors.As(err, &respErr) && respErr.Response != nil {
		status := respErr.HTTPStatusCode()
		code := ""
		if hasAPI {
			code = apiErr.ErrorCode()
		}
		switch {
		case status >= 500, status == 408, status == 429, transientCodes[code]:
			return false, ""
		case status >= 300:
			// 3xx (a redirect to the bucket's region) and the remaining 4xx are answers about
			// the request itself: the same request gets the same answer.
			if h, ok := hints[code]; ok {
				return true, h
			}
			if code == "" && status == 404 {
				return true, "not found (a HEAD request on a missing key or bucket)"
			}
			if code == "" && status == 403 {
				return true, hints["AccessDenied"]
			}
			return true, ""
		}
		return false, ""
	}
	if hasAPI {
		// A modelled error without an HTTP response (rare): trust the code tables.
		if h, ok := hints[apiErr.ErrorCode()]; ok {
			return true, h
		}
		return false, ""
	}

	// Local file system errors: a missing or forbidden path, or a key whose directory is a
	// file, stays that way. A full disk (ENOSPC) or an I/O error may clear, so they are transient.
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission),
		errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EROFS), errors.Is(err, syscall.ENAMETOOLONG):
		return true, ""
	}
	return false, ""
}
