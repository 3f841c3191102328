package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

const (
	statusToken = "status-test-token-0123456789"
	dsnPassword = "s3cret-dsn-pw"
)

// statusEnv runs a daemon with a PostgreSQL source (its DSN carries a
// password), a PostgreSQL sink and an http.token.
func statusEnv(t *testing.T) (*env, *running, *logBuffer) {
	e := newEnv(t)
	if err := e.pg.CreateDB(context.Background(), "warehouse"); err != nil {
		t.Fatal(err)
	}
	e.exec("CREATE TABLE public.items (id bigint PRIMARY KEY, v int)")
	e.exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 10) g")
	withPassword := strings.Replace(e.pg.DSN("postgres"), "postgres@", "postgres:"+dsnPassword+"@", 1)
	cfg := e.config([]string{"public.items"}, func(c *config.Config) {
		c.Source.DSN = config.Secret(withPassword)
		c.HTTP.Token = statusToken
		c.Sinks = []config.Sink{{Name: "wh", Type: "postgres", DSN: config.Secret(strings.Replace(e.pg.DSN("warehouse"), "postgres@", "postgres:"+dsnPassword+"@", 1)), Linger: 20 * time.Millisecond}}
	})
	log, buf := observerLogger()
	r := e.startWithLogger(cfg, daemon.Options{}, log)
	return e, r, buf
}

func getAuth(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+statusToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func status(t *testing.T, r *running) observe.Status {
	t.Helper()
	code, body := getAuth(t, r.httpURL+"/api/status")
	if code != http.StatusOK {
		t.Fatalf("/api/status: %d %s", code, body)
	}
	var st observe.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/api/status is not a status: %v", err)
	}
	return st
}

// TestStatusAPIAndCLI checks /api/status against what flowed, the CLI's
// rendering of it, and that no page, answer or log shows a secret.
func TestStatusAPIAndCLI(t *testing.T) {
	e, r, logs := statusEnv(t)
	e.exec("INSERT INTO public.items SELECT g, g FROM generate_series(11, 40) g")
	e.exec("UPDATE public.items SET v = 0 WHERE id <= 5")
	var st observe.Status
	defer func() {
		if t.Failed() {
			b, _ := json.MarshalIndent(st, "", " ")
			t.Logf("last status: %s", b)
		}
	}()
	waitFor(t, 60*time.Second, "the status to show what flowed", func() (bool, error) {
		st = status(t, r)
		if st.Pipeline == nil || len(st.Pipeline.Tables) != 1 || len(st.Sinks) != 1 || len(st.Sinks[0].Tables) != 1 {
			return false, nil
		}
		pc, sc := st.Pipeline.Tables[0].Counts, st.Sinks[0].Tables[0].Counts
		// The sink folds a batch's changes per key: every key at least once.
		return pc["r"] == 10 && pc["c"] == 30 && pc["u"] == 5 && sc["r"]+sc["c"]+sc["u"] >= 40 && st.Pipeline.CheckpointAt != nil, nil
	})
	p := st.Pipeline
	if st.Name != "test" || st.Role != "all" || p.Source != "postgres" || p.Tables[0].Name != "public.items" || p.Checkpoint == "" {
		t.Errorf("status %+v / pipeline %+v", st, p)
	}
	if p.InFlightBudget != float64(64<<20) || p.State != observe.StateRunning {
		t.Errorf("budget %v, state %q (%s)", p.InFlightBudget, p.State, p.Reason)
	}
	if s := st.Sinks[0]; s.Name != "wh" || s.Type != "postgres" || s.Group != "tideline-test-wh" || s.LastBatchAt == nil || s.State != observe.StateRunning {
		t.Errorf("sink %+v", s)
	}

	// The CLI renders the same status, counts included.
	bin := tidelineBin(t)
	out, err := exec.Command(bin, "status", "--url", r.httpURL, "--token", statusToken).CombinedOutput()
	if err != nil {
		t.Fatalf("tideline status: %v\n%s", err, out)
	}
	for _, want := range []string{"state: running", "CAPTURE (postgres)", "SINK wh (postgres, group tideline-test-wh)", "consumer lag"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tideline status lacks %q:\n%s", want, out)
		}
	}
	// The table row: inserts, updates, deletes, snapshot, truncates.
	if !regexp.MustCompile(`(?m)^\s+public\.items\s+30\s+5\s+0\s+10\s+0\s`).Match(out) {
		t.Errorf("tideline status does not show public.items with 30 inserts, 5 updates, 10 snapshot rows:\n%s", out)
	}
	// --json answers the API's document, and the token may come from the
	// environment (and never shows in --help).
	cmd := exec.Command(bin, "status", "--url", r.httpURL, "--json")
	cmd.Env = append(os.Environ(), "TIDELINE_HTTP_TOKEN="+statusToken)
	out, err = cmd.Output()
	var js observe.Status
	if err != nil || json.Unmarshal(out, &js) != nil || js.Pipeline == nil || js.Pipeline.Changes["c"] != 30 || js.Pipeline.Changes["r"] != 10 {
		t.Errorf("tideline status --json with the token from the environment: %v: %.300s", err, out)
	}
	cmd = exec.Command(bin, "status", "--help")
	cmd.Env = append(os.Environ(), "TIDELINE_HTTP_TOKEN="+statusToken)
	if out, _ := cmd.CombinedOutput(); strings.Contains(string(out), statusToken) {
		t.Errorf("tideline status --help shows the token:\n%s", out)
	}
	cmd = exec.Command(bin, "status", "--url", r.httpURL)
	cmd.Env = append(os.Environ(), "TIDELINE_HTTP_TOKEN=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs the token") {
		t.Errorf("tideline status without the token: %v: %s", err, out)
	}

	// No secret anywhere: the DSN passwords and the token.
	pages := map[string]string{"/api/status": "", "/": "", "/metrics": "", "/readyz": ""}
	for path := range pages {
		_, pages[path] = getAuth(t, r.httpURL+path)
	}
	req, _ := http.NewRequest(http.MethodGet, r.httpURL+"/api/events", nil)
	req.Header.Set("Authorization", "Bearer "+statusToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			pages["/api/events"] = sc.Text()
			break
		}
	}
	resp.Body.Close()
	pages["logs"] = logs.String()
	for where, text := range pages {
		if text == "" {
			t.Errorf("%s: empty", where)
		}
		for _, secret := range []string{dsnPassword, statusToken} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows a secret", where)
			}
		}
	}
}

// TestDashboardInBrowser loads the dashboard in headless Chromium and
// watches its changes counter rise after rows are written to the source.
func TestDashboardInBrowser(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is missing (make test installs the chromium package): %v", chromium, err)
	}
	e, r, _ := statusEnv(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, tcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer tcancel()

	counter := func() int {
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("total-changes")))
		if err != nil {
			t.Fatalf("read the counter: %v", err)
		}
		n, err := strconv.Atoi(strings.ReplaceAll(strings.TrimSpace(text), ",", ""))
		if err != nil {
			t.Fatalf("counter %q is not a number", text)
		}
		return n
	}
	// The token travels once in the address, then in a cookie.
	if _, err := chromedp.Run(ctx, chromedp.Navigate(r.httpURL+"/?token="+statusToken)); err != nil {
		t.Fatalf("load the dashboard: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.WaitVisible(chromedp.ID("total-changes"))); err != nil {
		t.Fatalf("the dashboard shows no counter: %v", err)
	}
	var before int
	waitFor(t, 60*time.Second, "the snapshot's 10 rows on the page", func() (bool, error) {
		before = counter()
		return before >= 10, nil
	})
	conn, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("conn")))
	if err != nil {
		t.Fatal(err)
	}
	url, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if conn != "live" || strings.Contains(url, statusToken) {
		t.Errorf("connection %q, address %q (the token must leave the address)", conn, url)
	}
	e.exec("INSERT INTO public.items SELECT g, g FROM generate_series(100, 149) g")
	waitFor(t, 30*time.Second, "the counter to rise by the 50 new rows, with no reload", func() (bool, error) {
		return counter() >= before+50, nil
	})
	var sinkRows string
	waitFor(t, 30*time.Second, "the sink card to count the applied rows", func() (bool, error) {
		var err error
		if sinkRows, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`[data-sink="wh"] .sink-rows`))); err != nil {
			return false, nil
		}
		n, _ := strconv.Atoi(strings.ReplaceAll(sinkRows, ",", ""))
		return n >= 60, nil
	})
	t.Logf("dashboard: %d changes before the insert, %d after; sink rows %s", before, counter(), sinkRows)
}
