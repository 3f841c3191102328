package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// env is one test's PostgreSQL and Kafka.
type env struct {
	t       *testing.T
	pg      *testenv.Postgres
	brokers []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pg := testenv.NewPostgres(t, testenv.PGOptions{})
	k := testenv.NewKafka(t)
	return &env{t: t, pg: pg, brokers: k.ListenAddrs()}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if err := e.pg.Exec(context.Background(), "postgres", sql, args...); err != nil {
		e.t.Fatalf("exec %q: %v", sql, err)
	}
}

func (e *env) conn() *pgx.Conn {
	e.t.Helper()
	c, err := pgx.Connect(context.Background(), e.pg.DSN("postgres"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// config returns a parsed, validated config for this env.
func (e *env) config(tables []string, mutate func(*config.Config)) *config.Config {
	e.t.Helper()
	c := &config.Config{
		Name:   "test",
		Source: config.Source{Type: "postgres", DSN: config.Secret(e.pg.DSN("postgres")), Tables: tables, StatusInterval: 200 * time.Millisecond},
		Kafka:  config.Kafka{Brokers: e.brokers},
		HTTP:   config.HTTP{Listen: "127.0.0.1:0"},
	}
	if mutate != nil {
		mutate(c)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// running is a daemon.Run in a goroutine.
type running struct {
	cancel  context.CancelFunc
	done    chan error
	httpURL string
	metrics *observe.Metrics
}

func (e *env) start(c *config.Config, o daemon.Options) *running {
	e.t.Helper()
	return e.startWithLogger(c, o, zaptest.NewLogger(e.t, zaptest.Level(zap.InfoLevel)))
}

// startWithLogger is start with the daemon logging to log.
func (e *env) startWithLogger(c *config.Config, o daemon.Options, log *zap.Logger) *running {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), metrics: observe.NewMetrics()}
	started := make(chan string, 1)
	o.Metrics = r.metrics
	o.Started = func(addr string, _ []string) { started <- addr }
	go func() { r.done <- daemon.Run(ctx, c, log, o) }()
	select {
	case addr := <-started:
		r.httpURL = "http://" + addr
	case err := <-r.done:
		cancel()
		e.t.Fatalf("daemon did not start: %v", err)
	}
	e.t.Cleanup(func() { r.stop(e.t) })
	waitFor(e.t, 60*time.Second, "readyz", func() (bool, error) {
		resp, err := http.Get(r.httpURL + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	return r
}

// stop cancels the daemon and checks it exited cleanly. Idempotent.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.done == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("daemon exited with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("daemon did not stop within 60s")
	}
	r.done = nil
}

// msg is a consumed record, decoded.
type msg struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       map[string]any
	Value     *envelope // nil for a tombstone
	Raw       []byte
}

type envelope struct {
	Before map[string]any `json:"before"`
	After  map[string]any `json:"after"`
	Source struct {
		Version   string `json:"version"`
		Connector string `json:"connector"`
		Name      string `json:"name"`
		TsMs      int64  `json:"ts_ms"`
		Snapshot  string `json:"snapshot"`
		DB        string `json:"db"`
		Schema    string `json:"schema"`
		Table     string `json:"table"`
		TxID      *int64 `json:"txId"`
		LSN       *int64 `json:"lsn"`
	} `json:"source"`
	Op          string `json:"op"`
	TsMs        int64  `json:"ts_ms"`
	Transaction *struct {
		ID         string `json:"id"`
		TotalOrder int64  `json:"total_order"`
	} `json:"transaction"`
}

// consumer reads topics from the start, accumulating messages.
type consumer struct {
	t  *testing.T
	cl *kgo.Client
	mu sync.Mutex
	ms []msg
}

func (e *env) consume(topics ...string) *consumer {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Topics appear when their first event is published: look again soon.
		kgo.MetadataMinAge(100*time.Millisecond), kgo.MetadataMaxAge(time.Second))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cl.Close)
	return &consumer{t: e.t, cl: cl}
}

// all returns the messages seen so far that match keep (nil keeps all).
func (c *consumer) all(keep func(msg) bool) []msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []msg
	for _, m := range c.ms {
		if keep == nil || keep(m) {
			out = append(out, m)
		}
	}
	return out
}

// fetch does one fetch round of at most d.
func (c *consumer) fetch(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	fs := c.cl.PollFetches(ctx)
	cancel()
	fs.EachRecord(func(r *kgo.Record) {
		m := msg{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Raw: r.Value}
		if r.Key != nil {
			if err := json.Unmarshal(r.Key, &m.Key); err != nil {
				c.t.Errorf("key %q is not JSON: %v", r.Key, err)
			}
		}
		if r.Value != nil {
			m.Value = new(envelope)
			dec := json.NewDecoder(strings.NewReader(string(r.Value)))
			dec.UseNumber()
			if err := dec.Decode(m.Value); err != nil {
				c.t.Errorf("value %q is not an envelope: %v", r.Value, err)
			}
		}
		c.mu.Lock()
		c.ms = append(c.ms, m)
		c.mu.Unlock()
	})
}

// poll reads until n messages matching keep have been seen or the timeout
// passes; it returns all messages matching keep.
func (c *consumer) poll(n int, timeout time.Duration, keep func(msg) bool) []msg {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := c.all(keep)
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			for _, m := range out {
				c.t.Logf("have: %s %v %.300s", m.Topic, m.Key, m.Raw)
			}
			c.t.Fatalf("got %d messages, want %d (timeout %s)", len(out), n, timeout)
		}
		c.fetch(500 * time.Millisecond)
	}
}

// logBuffer is a zap logger writing JSON lines to a buffer, for tests that
// check what is (not) logged.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Sync() error { return nil }

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func observerLogger() (*zap.Logger, *logBuffer) {
	b := &logBuffer{}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, b, zap.DebugLevel)), b
}

func isEvent(m msg) bool { return m.Value != nil }

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func nopLogger() *zap.Logger { return zap.NewNop() }
