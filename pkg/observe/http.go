package observe

import (
	"context"
	"crypto/subtle"
	_ "embed" // the dashboard page
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed dashboard.html
var dashboard []byte

// ReadyFunc reports whether the process is ready, and why not.
type ReadyFunc func() error

// Server serves /metrics, /healthz, /readyz, the dashboard at /, and the
// status API (/api/status, /api/events).
type Server struct {
	srv *http.Server
	ln  net.Listener
	hub *Hub
	// streams is cancelled when the server shuts down: Shutdown waits for
	// connections to go idle, which an event stream never does.
	streams context.Context
	stop    context.CancelFunc
}

// ServerOptions are the server's optional parts.
type ServerOptions struct {
	// Hub serves the dashboard and the status API; nil serves neither.
	Hub *Hub
	// Token, when set, must come with every request to the dashboard and
	// /api/*: "Authorization: Bearer <token>", or the cookie that
	// /?token=<token> sets. /metrics and the health checks stay open.
	Token string
	// WriteTimeout bounds writing an ordinary response (default 30s).
	// Event streams are exempt.
	WriteTimeout time.Duration
}

const tokenCookie = "tideline_token"

// Listen binds addr and returns a server that has not started serving.
func Listen(addr string, m *Metrics, ready ReadyFunc, o ServerOptions) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w", addr, err)
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 30 * time.Second
	}
	s := &Server{ln: ln, hub: o.Hub}
	s.streams, s.stop = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if o.Hub != nil {
		auth := authorizer(o.Token)
		mux.Handle("GET /{$}", auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if o.Token != "" && r.URL.Query().Get("token") != "" {
				// Came with ?token=: keep it in a cookie (the page's
				// EventSource cannot send headers) and drop it from the
				// address bar and the history.
				http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: o.Token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
				http.Redirect(w, r, "/", http.StatusSeeOther)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:")
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write(dashboard)
		})))
		mux.Handle("GET /api/status", auth(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			b, _ := o.Hub.Latest()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write(b)
		})))
		mux.Handle("GET /api/events", auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.events(w, r, m) })))
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: o.WriteTimeout}
	s.srv.RegisterOnShutdown(s.stop)
	return s, nil
}

// authorizer returns middleware that checks the token, in constant time.
func authorizer(token string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if token == "" {
			return next
		}
		want := []byte(token)
		ok := func(got string) bool { return subtle.ConstantTimeCompare([]byte(got), want) == 1 }
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") && ok(strings.TrimPrefix(h, "Bearer ")) {
				next.ServeHTTP(w, r)
				return
			}
			if c, err := r.Cookie(tokenCookie); err == nil && ok(c.Value) {
				next.ServeHTTP(w, r)
				return
			}
			if r.URL.Path == "/" && ok(r.URL.Query().Get("token")) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="tideline"`)
			http.Error(w, "unauthorized: this server needs http.token (Authorization: Bearer <token>, or open /?token=<token>)", http.StatusUnauthorized)
		})
	}
}

// events streams the status as server-sent events, one "status" event per
// update, until the client goes away or the server stops.
func (s *Server) events(w http.ResponseWriter, r *http.Request, m *Metrics) {
	rc := http.NewResponseController(w)
	// The server's WriteTimeout would cut the stream after 30 s: this
	// response has no overall deadline, only one per write (below), so a
	// client that stops reading is dropped instead of holding the
	// goroutine.
	if err := rc.SetWriteDeadline(time.Time{}); err != nil {
		http.Error(w, "streaming not supported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	m.EventStreams.Inc()
	defer m.EventStreams.Dec()
	ctx := r.Context() // done when the client goes away or the server shuts down
	for {
		b, next := s.hub.Latest()
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", b); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.streams.Done():
			return
		case <-next:
		}
	}
}

// Addr returns the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx is done, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(sctx); err != nil {
			_ = s.srv.Close()
		}
		s.stop()
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	}
}
