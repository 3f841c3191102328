package observe

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// serve starts a server with a hub on a free port and returns its URL.
func serve(t *testing.T, o ServerOptions) (string, *Metrics, *Hub) {
	t.Helper()
	m := NewMetrics()
	m.Events.WithLabelValues("p", "public.t", "c").Add(3)
	h := NewHub(m, Providers{Pipeline: func() *PipelineInfo {
		return &PipelineInfo{Name: "p", Source: "postgres", State: StateRunning, Checkpoint: "0/16B3748", CheckpointAt: time.Now()}
	}}, Status{Name: "p", Version: "t", Role: "all", StartedAt: time.Now()}, nil)
	o.Hub = h
	srv, err := Listen("127.0.0.1:0", m, func() error { return nil }, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Serve(ctx) }()
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		}
	})
	return "http://" + srv.Addr(), m, h
}

// readEvents reads n status events from an event stream.
func readEvents(t *testing.T, body io.Reader, n int) []Status {
	t.Helper()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var out []Status
	event := ""
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if event != "status" {
				t.Fatalf("event %q, want status", event)
			}
			var st Status
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &st); err != nil {
				t.Fatalf("event data is not a status: %v", err)
			}
			out = append(out, st)
		}
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d events (%v)", len(out), sc.Err())
	}
	return out
}

// TestEventStreamOutlivesWriteTimeout: the server's write timeout cuts
// ordinary responses, never the event stream.
func TestEventStreamOutlivesWriteTimeout(t *testing.T) {
	url, _, _ := serve(t, ServerOptions{WriteTimeout: 300 * time.Millisecond})
	resp, err := http.Get(url + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	// Four events span at least 2 s of the hub's own clock: the stream
	// stayed open far past the 300 ms write timeout.
	evs := readEvents(t, resp.Body, 4)
	if evs[3].Pipeline == nil || evs[3].Pipeline.Changes["c"] != 3 || evs[3].Now.Sub(evs[0].Now) < 2*time.Second {
		t.Errorf("events do not carry the live status: %+v", evs[3].Pipeline)
	}
}

// TestEventStreamClientsDoNotLeak opens and drops many streams: no
// goroutine and no stream is left behind.
func TestEventStreamClientsDoNotLeak(t *testing.T) {
	url, m, _ := serve(t, ServerOptions{})
	gauge := func() float64 { v, _ := gaugeValue(m.EventStreams); return v }
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readEvents(t, resp.Body, 1)
		defer resp.Body.Close()
	}
	if g := gauge(); g != 20 {
		t.Errorf("tideline_http_event_streams = %v with 20 clients", g)
	}
	for _, c := range cancels {
		c()
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for gauge() != 0 || runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("after the clients left: %v streams, %d goroutines (%d before)\n%s", gauge(), runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestToken(t *testing.T) {
	const token = "0123456789abcdef0123"
	url, _, _ := serve(t, ServerOptions{Token: token})
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, url+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, path := range []string{"/", "/api/status", "/api/events"} {
		if r := get(path, nil); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without the token: %d", path, r.StatusCode)
		}
		if r := get(path, map[string]string{"Authorization": "Bearer wrong-token-0000000"}); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", path, r.StatusCode)
		}
	}
	if r := get("/api/status", map[string]string{"Authorization": "Bearer " + token}); r.StatusCode != http.StatusOK {
		t.Errorf("/api/status with the token: %d", r.StatusCode)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if r := get(path, nil); r.StatusCode != http.StatusOK {
			t.Errorf("%s should stay open: %d", path, r.StatusCode)
		}
	}
	// A browser opens /?token=…: the token moves to a cookie and out of
	// the address.
	r := get("/?token="+token, nil)
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/" {
		t.Fatalf("/?token=: %d to %q", r.StatusCode, r.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == tokenCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly {
		t.Fatalf("no HttpOnly token cookie: %v", r.Cookies())
	}
	if r := get("/api/status", map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}); r.StatusCode != http.StatusOK {
		t.Errorf("/api/status with the cookie: %d", r.StatusCode)
	}
}

func TestDashboardIsSelfContained(t *testing.T) {
	url, _, _ := serve(t, ServerOptions{})
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	page := string(b)
	if !strings.Contains(page, `new EventSource("api/events")`) || !strings.Contains(page, `id="total-changes"`) {
		t.Error("the page does not subscribe to the event stream")
	}
	for _, ext := range []string{"http://", "https://", "//cdn", "<link "} {
		if strings.Contains(page, ext) {
			t.Errorf("the page loads something from elsewhere (%q): it must work offline", ext)
		}
	}
}

func TestHubRatesAndHistory(t *testing.T) {
	m := NewMetrics()
	c := m.SinkRows.WithLabelValues("s", "public.t", "u")
	m.SinkLag.WithLabelValues("s", "public.t").Set(42)
	h := NewHub(m, Providers{Sinks: func() []SinkInfo { return []SinkInfo{{Name: "s", Type: "duckdb", State: StateCatchingUp}} }},
		Status{Name: "n"}, nil)
	t0 := time.Now()
	for i := 1; i <= 30; i++ {
		c.Add(10) // 10 rows a second
		h.update(t0.Add(time.Duration(i) * time.Second))
	}
	b, _ := h.Latest()
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Sinks) != 1 || len(st.Sinks[0].Tables) != 1 {
		t.Fatalf("sinks %+v", st.Sinks)
	}
	tb := st.Sinks[0].Tables[0]
	if tb.Rate != 10 || st.Sinks[0].Rate != 10 {
		t.Errorf("rate %v (sink %v), want 10", tb.Rate, st.Sinks[0].Rate)
	}
	if len(tb.History) < 4 || tb.History[len(tb.History)-1] != 10 {
		t.Errorf("history %v, want 5-second points of 10/s", tb.History)
	}
	if tb.Lag == nil || *tb.Lag != 42 || st.Sinks[0].Lag != 42 || st.State != StateCatchingUp {
		t.Errorf("lag %v/%v, state %q", tb.Lag, st.Sinks[0].Lag, st.State)
	}
}

func TestHubLogsStateChanges(t *testing.T) {
	m := NewMetrics()
	state := StateRunning
	h := NewHub(m, Providers{Sinks: func() []SinkInfo { return []SinkInfo{{Name: "s", State: state, Reason: "because"}} }}, Status{}, nil)
	r := NewRecent(10)
	core := r.Core()
	h.LogStates(zap.New(core))
	for _, s := range []string{StateRunning, StateStalled, StateStalled, StateStalled, StateRunning} {
		state = s
		h.update(time.Now())
	}
	// running -> stalled (warn), stalled -> running (info, not kept by
	// Recent, which keeps warnings): one warning for three stalled updates.
	if es := r.Entries(); len(es) != 1 || es[0].Message != "state changed" {
		t.Errorf("logged %+v, want one warning", es)
	}
}

func TestRecentKeepsWarningsAndErrors(t *testing.T) {
	r := NewRecent(3)
	log := zap.New(r.Core()).Named("sink").With(zap.String("sink", "wh"))
	log.Info("not kept")
	for i := range 5 {
		log.Warn(fmt.Sprintf("w%d", i), zap.Error(fmt.Errorf("boom %d", i)))
	}
	log.Error("e5")
	es := r.Entries()
	var got []string
	for _, e := range es {
		got = append(got, e.Level+" "+e.Message+" "+e.Error)
	}
	// The newest three, newest first.
	if want := "error e5 |warn w4 boom 4|warn w3 boom 3"; strings.Join(got, "|") != want {
		t.Fatalf("entries %q, want %q", strings.Join(got, "|"), want)
	}
	if es[1].Component != "sink wh" {
		t.Errorf("component %q, want the logger name and the sink", es[1].Component)
	}
}

func gaugeValue(g prometheus.Gauge) (float64, error) {
	var m dto.Metric
	err := g.Write(&m)
	return m.GetGauge().GetValue(), err
}
