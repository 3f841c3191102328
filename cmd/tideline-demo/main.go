// Command tideline-demo runs Tideline end to end on one machine, with nothing to set up: a
// throwaway PostgreSQL server, or with -source mysql a MariaDB server (from the machine's own
// binaries, in a temp dir, on a free port), holding a small shop schema under a steady workload,
// streamed by the daemon into its embedded Kafka broker. It is what `make demo` (and
// `make demo SOURCE=mysql`) runs.
//
// Ctrl-C (or SIGTERM) stops the workload and the daemon, which drains and confirms, then the
// database server; its temp dir and the broker's data dir are removed, so nothing is left
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
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
)

// name is the pipeline name: it prefixes the topics (and names PostgreSQL's slot and
// publication).
const name = "shop"

// database is one kind of source database the demo runs: what differs between PostgreSQL and
// MariaDB. Everything else (the broker, the daemon, the workload's logic, the banner, the
// cleanup) is shared.
type database struct {
	title      string   // the server's name in messages: "PostgreSQL"
	sourceType string   // source.type
	tables     []string // the captured tables as source.tables names them; the schema creates them
	stopping   string   // what the daemon finishes on Ctrl-C before the server stops
	packages   string   // the scripts/ensure-packages.sh mode that installs the server
	makeCmd    string   // the make command that runs this demo
	sql        *shopSQL // the shop's schema and statements in this server's SQL
	// start starts a throwaway server in a new temp dir and returns once it accepts connections.
	// On an error nothing is left running; an error matching testenv.ErrNotInstalled means the
	// binaries are missing. Cancelling ctx cuts the start short with an error.
	start func(ctx context.Context, log *zap.Logger) (server, error)
}

// server is a running throwaway database server. run calls its methods from its own goroutine,
// except connect, which the workload calls from its goroutine too.
type server interface {
	// dsn is the source.dsn the daemon connects with, to the database holding the shop.
	dsn() string
	// shell is a command line that opens a SQL shell on the shop's database.
	shell() string
	// dir is the server's directory, removed by stop.
	dir() string
	// connect opens a connection to the server for one goroutine; shopSQL's statements name
	// their tables in full, so it need not select a database. The caller closes it.
	connect(ctx context.Context) (shopConn, error)
	// stop stops the server and removes its directory. run calls it once, after the daemon and
	// the workload have returned.
	stop() error
}

// databases are the -source values.
var databases = map[string]*database{
	"postgres": &postgresDB,
	"mysql":    &mariaDB,
}

type flags struct {
	source string // a key of databases; "" is postgres
	kafka  string // embedded broker listen address
	http   string // metrics and health listen address
	rate   int    // workload transactions per second
	// webhook runs a webhook sink (customers, mapped) against a receiver the demo starts, which
	// prints what arrives to out (stdout when nil).
	webhook bool
	out     io.Writer
}

// database returns the database f.source names.
func (f flags) database() (*database, error) {
	if f.source == "" {
		return &postgresDB, nil
	}
	db, ok := databases[f.source]
	if !ok {
		return nil, fmt.Errorf("-source %q: want postgres or mysql", f.source)
	}
	return db, nil
}

// started is what a running demo tells its user.
type started struct {
	db       *database
	dsn      string    // the database server's DSN, as the daemon uses it
	shell    string    // a command that opens a SQL shell on it
	dbDir    string    // its directory, removed on exit
	tmp      string    // the demo's temp dir (the broker's data), removed on exit
	httpAddr string    // the bound metrics and health address, "" when off
	brokers  []string  // the embedded broker's address
	duckdb   string    // the DuckDB warehouse file the demo's sink writes
	lake     string    // the folder of the Parquet change log the demo's other sink writes
	hook     *receiver // the webhook receiver, nil without -webhook
}

func main() {
	var f flags
	flag.StringVar(&f.source, "source", "postgres", "the source database: postgres (PostgreSQL) or mysql (MariaDB)")
	flag.StringVar(&f.kafka, "kafka", "127.0.0.1:9092", "listen address of the embedded Kafka broker")
	flag.StringVar(&f.http, "http", "127.0.0.1:8080", "listen address of /metrics, /healthz and /readyz")
	flag.IntVar(&f.rate, "rate", 20, "workload transactions per second (0: no workload, only the snapshot)")
	flag.BoolVar(&f.webhook, "webhook", false, "also run a webhook sink (customers, mapped to contacts) against a local receiver that prints what arrives")
	flag.Parse()
	if _, err := f.database(); err != nil || flag.NArg() > 0 || f.rate < 0 {
		if err != nil {
			fmt.Fprintln(os.Stderr, "tideline-demo:", err)
		}
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
	db, err := f.database()
	if err != nil {
		return err
	}
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
		fmt.Fprintf(os.Stderr, "\nStopping: draining in-flight changes, %s, stopping %s (Ctrl-C again to quit at once)...\n", db.stopping, db.title)
	})
	return run(ctx, f, log, func(s started) { printBanner(os.Stdout, f, s) })
}

// run runs the demo until ctx is done, then stops everything it started and removes its temp
// dirs. It calls onStart once the daemon serves. Stopping early, even during start-up, is not an
// error.
func run(ctx context.Context, f flags, log *zap.Logger, onStart func(started)) error {
	db, err := f.database()
	if err != nil {
		return err
	}
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

	srv, err := db.start(ctx, log)
	if errors.Is(err, testenv.ErrNotInstalled) {
		return fmt.Errorf("%w\n(scripts/ensure-packages.sh %s installs it; %s runs that first)", err, db.packages, db.makeCmd)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: the server's set-up was cut short, and that is all
		}
		return fmt.Errorf("start %s: %w", db.title, err)
	}
	defer func() {
		if err := srv.stop(); err != nil {
			log.Error("stop "+db.title, zap.Error(err))
		}
	}()

	if err := createSchema(ctx, srv, db.sql); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("created the shop schema with seed rows", zap.Strings("tables", db.tables))

	warehouse, lake := filepath.Join(tmp, "warehouse.duckdb"), filepath.Join(tmp, "lake")
	var hook *receiver
	if f.webhook {
		if hook, err = startReceiver(f.out); err != nil {
			return err
		}
		defer hook.Close()
	}
	cfg, err := demoConfig(f, db, srv.dsn(), filepath.Join(tmp, "kafka"), warehouse, lake, hook)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	if f.rate > 0 {
		g.Go(func() error { return runWorkload(gctx, srv, db.sql, f.rate, log.Named("workload")) })
	}
	g.Go(func() error {
		return daemon.Run(gctx, cfg, log, daemon.Options{
			Started: func(httpAddr string, brokers []string) {
				onStart(started{db: db, dsn: srv.dsn(), shell: srv.shell(), dbDir: srv.dir(), tmp: tmp, httpAddr: httpAddr, brokers: brokers, duckdb: warehouse, lake: lake, hook: hook})
			},
		})
	})
	// The workload returns nil when cancelled and the daemon after its drain, so any error here
	// is a real one, even when it happened while stopping.
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("demo stopped; stopping " + db.title + " and removing the temp dirs")
	return nil
}

// demoConfig is the configuration the demo runs, built the way a config file is: defaults, then
// validation.
// Besides the capture, it runs a DuckDB warehouse sink that mirrors every table into one file,
// and a Parquet sink that writes every change to a change log in the folder lake.
func demoConfig(f flags, db *database, dsn, kafkaDir, warehouse, lake string, hook *receiver) (*config.Config, error) {
	keepOpen := false // so that tideline duckdb can read the file between batches
	cfg := &config.Config{
		Name: name,
		Source: config.Source{
			Type:     db.sourceType,
			DSN:      config.Secret(dsn),
			Tables:   db.tables,
			Snapshot: "initial",
		},
		Kafka: config.Kafka{
			Brokers: []string{config.Embedded},
			Embedded: config.EmbeddedBroker{
				Listen:  f.kafka,
				DataDir: kafkaDir,
			},
		},
		Sinks: []config.Sink{
			{Name: "warehouse", Type: "duckdb", Path: warehouse, KeepOpen: &keepOpen, Linger: time.Second},
			{Name: "history", Type: "parquet", Path: "file://" + lake, Linger: 5 * time.Second},
		},
		HTTP: config.HTTP{Listen: f.http},
		Log:  config.Log{Level: "info", Format: "console"},
	}
	if hook != nil {
		cfg.Sinks = append(cfg.Sinks, config.Sink{Name: "crm", Type: "webhook", Tables: db.tables[:1], Linger: time.Second,
			CRM: config.CRM{URL: hook.URL, Secret: config.Secret(hook.secret), Object: "contacts", IDProperty: "email",
				Fields: map[string]string{"email": "lower(trim(email))", "full_name": "name", "country": "upper(country)", "customer_ref": `hash(concat("shop-", id))`},
				Where:  `email != nil`, OnDelete: "archive"}})
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
	broker, tables := strings.Join(s.brokers, ","), s.db.tables
	var b strings.Builder
	line := strings.Repeat("=", 78)
	fmt.Fprintf(&b, "\n%s\n", line)
	fmt.Fprintf(&b, "Tideline demo is running: %s -> Tideline -> embedded Kafka broker -> DuckDB warehouse, Parquet change log\n\n", s.db.title)
	fmt.Fprintf(&b, "  %-13s%s\n", s.db.title, s.dsn)
	fmt.Fprintf(&b, "               %s\n", s.shell)
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
	fmt.Fprintf(&b, "  Warehouse    %s (DuckDB, written by the sink \"warehouse\" every second)\n", s.duckdb)
	fmt.Fprintf(&b, "  Query it     %s\n", duckdbQuery(s))
	fmt.Fprintf(&b, "  Change log   %s (Parquet, every change, written by the sink \"history\" every 5 seconds)\n", s.lake)
	fmt.Fprintf(&b, "  Query it     %s\n", parquetQuery(s))
	if s.hook != nil {
		fmt.Fprintf(&b, "  Webhook      %s receives the customers, mapped to contacts (sink \"crm\"); each batch is printed below\n", s.hook.URL)
	}
	fmt.Fprintln(&b)
	if s.httpAddr != "" {
		fmt.Fprintf(&b, "  Metrics      http://%s/metrics   (try: curl -s http://%s/metrics | grep tideline_events_total)\n", s.httpAddr, s.httpAddr)
		fmt.Fprintf(&b, "  Ready        http://%s/readyz\n", s.httpAddr)
	}
	fmt.Fprintf(&b, "\nCtrl-C to stop.\n%s\n\n", line)
	_, _ = io.WriteString(w, b.String())
}

// duckdbQuery is a command that queries the demo's warehouse.
func duckdbQuery(s started) string {
	t := s.db.tables[len(s.db.tables)-1]
	return fmt.Sprintf(`bin/tideline duckdb --path %s "SELECT _tideline_op, count(*) FROM %s GROUP BY 1"`, s.duckdb, t)
}

// parquetQuery is a command that reads the demo's change log (parquetSQL).
func parquetQuery(s started) string {
	return fmt.Sprintf(`bin/tideline duckdb "%s"`, parquetSQL(s))
}

// parquetSQL reads the newest changes of one table from the demo's change log.
func parquetSQL(s started) string {
	t := s.db.tables[len(s.db.tables)-1]
	return fmt.Sprintf(`SELECT _tideline_commit_ts, _tideline_op, id, status FROM read_parquet('%s/%s/*/*.parquet', union_by_name=true) ORDER BY _tideline_position DESC LIMIT 10`, s.lake, t)
}

// removeAll removes dir, logging (not returning) a failure: it runs on the way out.
func removeAll(log *zap.Logger, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		log.Error("remove temp dir", zap.String("dir", dir), zap.Error(err))
	}
}
