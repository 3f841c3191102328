package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// tidelineBin builds cmd/tideline once per test binary (without -race: the
// process under test runs at production speed).
func tidelineBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tideline-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "tideline")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/tideline-cdc/tideline/cmd/tideline").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a tideline process.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	logPath string
	httpURL string
	done    chan error
}

// writeConfig writes a config file for a subprocess run.
func (e *env) writeConfig(tables []string, extra string) string {
	e.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "name: test\nsource:\n  type: postgres\n  dsn: %s\n  tables: [%s]\n  status_interval: 200ms\n",
		e.pg.DSN("postgres"), strings.Join(tables, ", "))
	fmt.Fprintf(&b, "kafka:\n  brokers: [%s]\n", strings.Join(e.brokers, ", "))
	b.WriteString("log:\n  level: info\n")
	b.WriteString(extra)
	path := filepath.Join(e.t.TempDir(), "tideline.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func startProc(t *testing.T, cfgPath string, httpPort int) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "tideline-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tidelineBin(t), "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logPath: logf.Name(), httpURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort), done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// waitReady waits for /readyz, failing if the process exits.
func (p *proc) waitReady(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			p.t.Fatalf("tideline exited early (%v):\n%s", err, p.log())
		default:
		}
		resp, err := http.Get(p.httpURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("tideline not ready after %s:\n%s", timeout, p.log())
}

func (p *proc) kill9() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and checks the process exits 0 within timeout.
func (p *proc) term(timeout time.Duration) {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Errorf("tideline exited with %v after SIGTERM:\n%s", err, p.log())
		}
	case <-time.After(timeout):
		p.t.Errorf("tideline did not exit within %s of SIGTERM", timeout)
	}
}

// metric reads one sample of a metric from /metrics (the first line that
// starts with name and contains every label fragment).
func (p *proc) metric(name string, labels ...string) (float64, error) {
	resp, err := http.Get(p.httpURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		return strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
	}
	return 0, fmt.Errorf("metric %s%v not found", name, labels)
}

func httpConfig(port int) string { return fmt.Sprintf("http:\n  listen: 127.0.0.1:%d\n", port) }

// TestKillNineLoop kills tideline with SIGKILL at random moments while a
// writer commits, restarts it, and checks that every committed change
// reached Kafka in per-key order (duplicates of the in-flight window are
// allowed and removed with the documented rule).
func TestKillNineLoop(t *testing.T) {
	e := newEnv(t)
	const seeded = 2000
	e.exec("CREATE TABLE public.kv (id bigint PRIMARY KEY, v bigint NOT NULL)")
	e.exec(fmt.Sprintf("INSERT INTO public.kv SELECT g, 1 FROM generate_series(1, %d) g", seeded))
	port, _ := freePort(t)
	cfg := e.writeConfig([]string{"public.kv"}, httpConfig(port))
	w := startWriter(t, e.pg.DSN("postgres"), seeded+1, seeded)
	kills := 0
	for i := 0; i < 6; i++ {
		p := startProc(t, cfg, port)
		if i > 0 {
			p.waitReady(60 * time.Second)
		}
		time.Sleep(time.Duration(300+rand.IntN(2500)) * time.Millisecond)
		p.kill9()
		kills++
	}
	p := startProc(t, cfg, port)
	p.waitReady(60 * time.Second)
	time.Sleep(time.Second)
	committed := w.halt()
	t.Logf("writer committed %d transactions across %d kills", w.count.Load(), kills)
	c := e.consume("test.public.kv")
	ms := consumeUntil(t, c, committed, 90*time.Second)
	dups := checkKV(t, ms, committed, true)
	t.Logf("%d events, %d duplicates dropped by (transaction lsn, total_order)", len(ms), dups)
	// A clean stop confirms everything delivered: a restart re-sends
	// nothing.
	p.term(60 * time.Second)
	before := len(c.all(nil))
	p = startProc(t, cfg, port)
	p.waitReady(60 * time.Second)
	time.Sleep(2 * time.Second)
	c.fetch(2 * time.Second)
	if after := len(c.all(nil)); after != before {
		t.Errorf("restart after SIGTERM re-sent %d records: the last position was not confirmed on shutdown", after-before)
	}
	p.term(60 * time.Second)
}

// TestLargeTransactionWithinBudget streams one 1,000,000-row transaction
// through a 4 MiB in-flight budget and checks that every row reached Kafka
// and the in-flight bytes never exceeded the budget plus one batch.
func TestLargeTransactionWithinBudget(t *testing.T) {
	e := newEnv(t)
	e.exec("CREATE TABLE public.big (id bigint PRIMARY KEY, pad text)")
	port, _ := freePort(t)
	const budget, batch = 4 << 20, 256 << 10
	cfg := e.writeConfig([]string{"public.big"}, httpConfig(port)+
		fmt.Sprintf("capture:\n  max_inflight_bytes: %d\n  batch_bytes: %d\n", budget, batch))
	p := startProc(t, cfg, port)
	p.waitReady(60 * time.Second)
	const rows = 1_000_000
	go func() {
		if err := e.pg.Exec(context.Background(), "postgres",
			fmt.Sprintf("INSERT INTO public.big SELECT g, repeat('x', 100) FROM generate_series(1, %d) g", rows)); err != nil {
			t.Errorf("insert: %v", err)
		}
	}()
	adm := kadm.NewClient(kgoClient(t, e.brokers))
	var peak float64
	var samples int
	waitFor(t, 5*time.Minute, "1M rows in Kafka", func() (bool, error) {
		if v, err := p.metric("tideline_inflight_bytes"); err == nil {
			peak = max(peak, v)
			samples++
		}
		ends, err := adm.ListEndOffsets(context.Background(), "test.public.big")
		if err != nil {
			return false, nil
		}
		var n int64
		ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n >= rows, nil
	})
	if peak > budget+batch {
		t.Errorf("in-flight bytes peaked at %.0f, over the budget %d plus one batch %d", peak, budget, batch)
	}
	if peak == 0 || samples < 3 {
		t.Errorf("in-flight gauge never seen above 0 (%d samples): the test measured nothing", samples)
	}
	rss := vmHWM(t, p.cmd.Process.Pid)
	t.Logf("in-flight peak %.0f bytes (budget %d), peak RSS %d MiB over %d samples", peak, budget, rss>>20, samples)
	if rss > 400<<20 {
		t.Errorf("peak RSS %d MiB: memory is not bounded by the budget", rss>>20)
	}
	p.term(60 * time.Second)
}

func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb << 10
		}
	}
	t.Fatal("VmHWM not found")
	return 0
}

func kgoClient(t *testing.T, brokers []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func freePort(t *testing.T) (int, error) {
	t.Helper()
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p, nil
}
