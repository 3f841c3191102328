package crm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/time/rate"
)

// Request is one HTTP request a CRM sink sends: what Apply sends and what
// Preview shows.
type Request struct {
	Method string `json:"method"`
	URL    string `json:"url"`
	// Header holds the headers the request is sent with. Preview leaves
	// out the credentials (Authorization), which are added on sending.
	Header http.Header `json:"header,omitempty"`
	// Body is the JSON body; nil for none.
	Body []byte `json:"body,omitempty"`
	// Note says what Preview cannot show exactly (e.g. ids a lookup
	// returns).
	Note string `json:"note,omitempty"`
	// Rows are the indexes, into the batch's Rows, of the rows the
	// request carries, in body order.
	Rows []int `json:"-"`
}

// Response is what came back.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// HTTPError is a response the client did not retry or gave up retrying.
type HTTPError struct {
	Method, URL string
	Status      int
	Body        []byte
}

func (e *HTTPError) Error() string {
	body := bytes.TrimSpace(e.Body)
	if len(body) > 512 {
		body = append(body[:512:512], "…"...)
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.URL, e.Status, body)
}

// Auth adds credentials to a request. Invalidate is called after a 401:
// the next Authorize must fetch new credentials (a refreshed token); it
// returns false when there is nothing to refresh (a static token), and
// the 401 is then final.
type Auth interface {
	Authorize(ctx context.Context, r *http.Request) error
	Invalidate() bool
}

// Bearer is a static bearer token.
type Bearer string

// Authorize implements Auth.
func (b Bearer) Authorize(_ context.Context, r *http.Request) error {
	if b != "" {
		r.Header.Set("Authorization", "Bearer "+string(b))
	}
	return nil
}

// Invalidate implements Auth: a static token cannot be refreshed.
func (Bearer) Invalidate() bool { return false }

// ClientConfig tunes a Client. Zero values take the defaults.
type ClientConfig struct {
	// RatePerSecond bounds the request rate (a token bucket); 0 means no
	// bound. Burst is the bucket's size (default: one second's worth).
	RatePerSecond float64
	Burst         int
	// Timeout bounds one request (default 30 s).
	Timeout time.Duration
	// Retries is how many times a request is sent again after a
	// transient failure (a network error or timeout, 408, 429, 5xx)
	// before Do gives up and returns the error (default 4); the apply
	// runtime then retries the whole batch, without limit.
	Retries int
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts (default 500 ms and 30 s). MaxRetryAfter caps a server's
	// Retry-After (default 2 min).
	MinBackoff, MaxBackoff, MaxRetryAfter time.Duration
	// HTTP is the client to send with (default: a new one).
	HTTP *http.Client
}

// Client sends a sink's requests: rate-limited, retried with backoff on
// transient failures, honouring Retry-After. It is safe for concurrent
// use.
type Client struct {
	cfg     ClientConfig
	http    *http.Client
	limiter *rate.Limiter
	auth    Auth
	// Inspect, when set, sees every response (HubSpot reads its
	// rate-limit headers) and returns how long to hold the next request.
	Inspect func(*Response) time.Duration

	mu    sync.Mutex
	until time.Time // no request before this (a server asked us to wait)
}

// NewClient returns a client that authorizes with auth (nil: none).
func NewClient(cfg ClientConfig, auth Auth) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 4
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = 2 * time.Minute
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{}
	}
	c := &Client{cfg: cfg, http: hc, auth: auth}
	if cfg.RatePerSecond > 0 {
		burst := cfg.Burst
		if burst <= 0 {
			burst = max(1, int(cfg.RatePerSecond))
		}
		c.limiter = rate.NewLimiter(rate.Limit(cfg.RatePerSecond), burst)
	}
	return c
}

// HTTP is the client's http.Client (token requests share it).
func (c *Client) HTTP() *http.Client { return c.http }

// Hold makes the next requests wait d (a server's rate-limit window).
func (c *Client) Hold(d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	if t := time.Now().Add(d); t.After(c.until) {
		c.until = t
	}
	c.mu.Unlock()
}

// Do sends req and returns the response of the first attempt that is not
// retried: any status but 408, 429 and 5xx, and a 401 after the
// credentials were refreshed once. Transient failures are retried up to
// Retries times; then the last one is returned as an error (an
// *HTTPError for a status). On cancellation Do returns ctx.Err().
func (c *Client) Do(ctx context.Context, req Request) (*Response, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = c.cfg.MinBackoff, c.cfg.MaxBackoff
	reauthed := false
	for attempt := 0; ; attempt++ {
		resp, err := c.send(ctx, req)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		wait := time.Duration(0)
		switch {
		case err != nil:
			// A network error or a timeout: the request may or may
			// not have been applied; sending it again is harmless
			// (upserts, and the webhook's idempotency key).
		case resp.Status == http.StatusUnauthorized && !reauthed && c.auth != nil && c.auth.Invalidate():
			reauthed = true
			attempt-- // not a failure of the target
			continue
		case resp.Status == http.StatusTooManyRequests || resp.Status == http.StatusRequestTimeout || resp.Status >= 500:
			err = &HTTPError{Method: req.Method, URL: req.URL, Status: resp.Status, Body: resp.Body}
			wait = retryAfter(resp.Header, time.Now())
		default:
			return resp, nil
		}
		if attempt >= c.cfg.Retries {
			return nil, err
		}
		if wait <= 0 {
			wait = bo.NextBackOff()
		}
		wait = min(wait, c.cfg.MaxRetryAfter)
		c.Hold(wait) // a 429 holds every request of the sink, not just this one
		if err := c.hold(ctx); err != nil {
			return nil, err
		}
	}
}

// send makes one attempt.
func (c *Client) send(ctx context.Context, req Request) (*Response, error) {
	if err := c.hold(ctx); err != nil {
		return nil, err
	}
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var body io.Reader
	if req.Body != nil {
		body = bytes.NewReader(req.Body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.Method, req.URL, body)
	if err != nil {
		return nil, err
	}
	for k, v := range req.Header {
		hr.Header[k] = v
	}
	if req.Body != nil && hr.Header.Get("Content-Type") == "" {
		hr.Header.Set("Content-Type", "application/json")
	}
	if c.auth != nil {
		if err := c.auth.Authorize(ctx, hr); err != nil {
			return nil, fmt.Errorf("authorize: %w", err)
		}
	}
	r, err := c.http.Do(hr)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read the response: %w", req.Method, req.URL, err)
	}
	resp := &Response{Status: r.StatusCode, Header: r.Header, Body: b}
	if c.Inspect != nil {
		c.Hold(c.Inspect(resp))
	}
	return resp, nil
}

// hold waits until a server's hold has passed.
func (c *Client) hold(ctx context.Context) error {
	c.mu.Lock()
	d := time.Until(c.until)
	c.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date; 0 when
// absent or unreadable.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}

// IsStatus reports whether err is an *HTTPError with that status.
func IsStatus(err error, status int) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Status == status
}
