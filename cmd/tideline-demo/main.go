// Command tideline-demo runs Tideline end to end on one machine, with nothing to set up: a
// throwaway PostgreSQL server (from the machine's own binaries, in a temp dir, on a free port)
// holding a small shop schema under a steady workload, streamed by the daemon into its embedded
// Kafka broker. It is what `make demo` runs.
//
// Ctrl-C (or SIGTERM) stops the workload and the daemon, which drains and confirms, then the
// PostgreSQL server; its temp dir and the broker's data dir are removed, so nothing is left
// behind. A second Ctrl-C quits at once: the server still dies with this process (testenv ties it
// to us), but the temp dirs stay.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// name is the pipeline name: it prefixes the topics and names the slot and publication.
const name = "shop"

// tables are the captured tables, created by createSchema.
var tables = []string{"public.customers", "public.orders"}

type flags struct {
	kafka string // embedded broker listen address
	http  string // metrics and health listen address
	rate  int    // workload transactions per second
}

// started is what a running demo tells its user.
type started struct {
	dsn      string   // the PostgreSQL server's DSN
	pgPort   int      // its port on 127.0.0.1
	pgDir    string   // its directory, removed on exit
	tmp      string   // the demo's temp dir (the broker's data), removed on exit
	httpAddr string   // the bound metrics and health address, "" when off
	brokers  []string // the embedded broker's address
}

func main() {
	var f flags
	flag.StringVar(&f.kafka, "kafka", "127.0.0.1:9092", "listen address of the embedded Kafka broker")
	flag.StringVar(&f.http, "http", "127.0.0.1:8080", "listen address of /metrics, /healthz and /readyz")
	flag.IntVar(&f.rate, "rate", 20, "workload transactions per second (0: no workload, only the snapshot)")
	flag.Parse()
	if flag.NArg() > 0 || f.rate < 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := realMain(f); err != nil {
		fmt.Fprintln(os.Stderr, "tideline-demo:", err)
		os.Exit(1)
	}
}

// realMain is main with an error to return, so that deferred cleanups run before os.Exit.
func realMain(f flags) error {
	log, err := observe.NewLogger("info", "console")
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the default handling comes back, so a second Ctrl-C quits at once.
	context.AfterFunc(ctx, func() {
		stop()
		fmt.Fprintln(os.Stderr, "\nStopping: draining in-flight changes, confirming the slot, stopping PostgreSQL (Ctrl-C again to quit at once)...")
	})
	return run(ctx, f, log, func(s started) { printBanner(os.Stdout, f, s) })
}

// run runs the demo until ctx is done, then stops everything it started and removes its temp
// dirs. It calls onStart once the daemon serves. Stopping early, even during start-up, is not an
// error.
func run(ctx context.Context, f flags, log *zap.Logger, onStart func(started)) error {
	// Check the fixed ports before starting anything, so a taken port is reported by name and
	// not as a failure deep inside the broker start.
	if err := portFree(f.kafka, "the embedded Kafka broker", "-kafka"); err != nil {
		return err
	}
	if err := portFree(f.http, "the metrics and health endpoints", "-http"); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "tideline-demo-*")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	defer removeAll(log, tmp)

	log.Info("starting a throwaway PostgreSQL server (initdb in a temp dir, wal_level=logical)")
	pg, err := testenv.StartPostgres(ctx, testenv.PGOptions{Logf: log.Sugar().Infof})
	if errors.Is(err, testenv.ErrNotInstalled) {
		return fmt.Errorf("%w\n(scripts/ensure-packages.sh demo installs it; make demo runs that first)", err)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: initdb was cut short, and that is all
		}
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer func() {
		if err := pg.Stop(); err != nil {
			log.Error("stop PostgreSQL", zap.Error(err))
		}
	}()
	dsn := pg.DSN("postgres")

	if err := createSchema(ctx, dsn); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("created the shop schema with seed rows", zap.Strings("tables", tables))

	cfg, err := demoConfig(f, dsn, filepath.Join(tmp, "kafka"))
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	if f.rate > 0 {
		g.Go(func() error { return runWorkload(gctx, dsn, f.rate, log.Named("workload")) })
	}
	g.Go(func() error {
		return daemon.Run(gctx, cfg, log, daemon.Options{
			Started: func(httpAddr string, brokers []string) {
				onStart(started{dsn: dsn, pgPort: pg.Port(), pgDir: pg.Dir(), tmp: tmp, httpAddr: httpAddr, brokers: brokers})
			},
		})
	})
	// The workload returns nil when cancelled and the daemon after its drain, so any error here
	// is a real one, even when it happened while stopping.
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("demo stopped; stopping PostgreSQL and removing the temp dirs")
	return nil
}

// demoConfig is the configuration the demo runs, built the way a config file is: defaults, then
// validation.
func demoConfig(f flags, dsn, kafkaDir string) (*config.Config, error) {
	cfg := &config.Config{
		Name: name,
		Source: config.Source{
			Type:     "postgres",
			DSN:      config.Secret(dsn),
			Tables:   tables,
			Snapshot: "initial",
		},
		Kafka: config.Kafka{
			Brokers: []string{config.Embedded},
			Embedded: config.EmbeddedBroker{
				Listen:  f.kafka,
				DataDir: kafkaDir,
			},
		},
		HTTP: config.HTTP{Listen: f.http},
		Log:  config.Log{Level: "info", Format: "console"},
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo config: %w", err)
	}
	return cfg, nil
}

// portFree reports a clear error when addr cannot be bound.
func portFree(addr, what, flagName string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: not host:port", flagName, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("port %s is taken, and the demo needs it for %s (%s): %w\n"+
			"find what holds it with: ss -ltnp 'sport = :%s'\n"+
			"stop that, or use another port: make demo DEMO_FLAGS='%s 127.0.0.1:<port>'",
			port, what, addr, err, port, flagName)
	}
	if err := ln.Close(); err != nil {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}

// printBanner tells the user what is running and how to look at it.
func printBanner(w io.Writer, f flags, s started) {
	broker := strings.Join(s.brokers, ",")
	var b strings.Builder
	line := strings.Repeat("=", 78)
	fmt.Fprintf(&b, "\n%s\n", line)
	fmt.Fprintf(&b, "Tideline demo is running: PostgreSQL -> Tideline -> embedded Kafka broker\n\n")
	fmt.Fprintf(&b, "  PostgreSQL   %s\n", s.dsn)
	fmt.Fprintf(&b, "               psql 'postgres://postgres@127.0.0.1:%d/postgres'\n", s.pgPort)
	if f.rate > 0 {
		fmt.Fprintf(&b, "  Workload     ~%d transactions/s of inserts, updates and deletes on both tables\n", f.rate)
	}
	fmt.Fprintf(&b, "  Kafka        %s (embedded single-node broker)\n", broker)
	fmt.Fprintf(&b, "  Topics       %s.%s\n", name, tables[0])
	for _, t := range tables[1:] {
		fmt.Fprintf(&b, "               %s.%s\n", name, t)
	}
	fmt.Fprintf(&b, "               %s.offsets (Tideline's own state: snapshot done)\n\n", name)
	fmt.Fprintf(&b, "  Watch them   kcat -b %s -C -t %s.%s -f '%%k %%s\\n'\n", broker, name, tables[0])
	fmt.Fprintf(&b, "               kcat -b %s -C -t %s.%s -f '%%k %%s\\n'\n", broker, name, tables[1])
	fmt.Fprintf(&b, "               kcat -b %s -L    (list topics)\n", broker)
	fmt.Fprintf(&b, "               (no kcat? apt-get install kcat)\n")
	if s.httpAddr != "" {
		fmt.Fprintf(&b, "  Metrics      http://%s/metrics   (try: curl -s http://%s/metrics | grep tideline_events_total)\n", s.httpAddr, s.httpAddr)
		fmt.Fprintf(&b, "  Ready        http://%s/readyz\n", s.httpAddr)
	}
	fmt.Fprintf(&b, "\nCtrl-C to stop.\n%s\n\n", line)
	_, _ = io.WriteString(w, b.String())
}

// removeAll removes dir, logging (not returning) a failure: it runs on the way out.
func removeAll(log *zap.Logger, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		log.Error("remove temp dir", zap.String("dir", dir), zap.Error(err))
	}
}
