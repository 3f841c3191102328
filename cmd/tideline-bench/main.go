// Command tideline-bench is what `make bench` runs: it measures Tideline
// against pg_recvlogical side by side, in one run on this machine, and prints
// the figures, their ratios and the targets beside them.
//
// It is a measurement program, not a test: it never fails on a threshold.
// It starts a throwaway PostgreSQL (internal/testenv) and an in-process kfake
// broker, which Tideline publishes to and which shares the CPU with it.
//
//	workload A  big transactions: -big rows in transactions of -tx-size rows
//	workload B  single-row transactions: -single transactions
//	latency     commit -> Kafka-ack latency at -rate tx/s for -duration
//	extra       pg_recvlogical text vs binary=true on workload A
//	M-A, M-B    the same two shapes on a throwaway MariaDB, Tideline vs
//	            mariadb-binlog reading the same binlog range (mysql.go)
//	S           the sink runtime applying -sink-rows changes from Kafka to
//	            PostgreSQL, MariaDB and DuckDB, vs each target's own bulk
//	            load of the same rows (sinks.go)
//
// Both readers of a workload read the same WAL: their slots are created at
// the same point, before the load is generated, and each is timed from its
// start to the end of that WAL (pg_recvlogical: --endpos; Tideline: every
// event acknowledged by Kafka).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	big        int
	rounds     int
	txSize     int
	single     int
	genConns   int
	rate       int
	duration   time.Duration
	warmup     time.Duration
	latWorkers int
	skipLat    bool
	cpuProfile string
	latencyCSV string
	compress   string

	skipMySQL   bool
	mysqlBig    int
	mysqlSingle int

	sinkRows    int
	sinkTargets string
	// sinkBatchRecords, when above 0, replaces the warehouse sinks'
	// default batch_records, to measure other defaults; the report shows
	// the value used.
	sinkBatchRecords int
}

func main() {
	var o options
	flag.IntVar(&o.big, "big", 1_000_000, "workload A: rows inserted in big transactions (0 skips it)")
	flag.IntVar(&o.txSize, "tx-size", 10_000, "workloads A and M-A: rows per transaction")
	flag.IntVar(&o.single, "single", 1_000_000, "workload B: single-row transactions (0 skips it)")
	flag.IntVar(&o.rounds, "rounds", 1, "workloads A, B, M-A and M-B: time each reader this many times (alternating, each on its own slot made at the same point) and keep the fastest")
	flag.IntVar(&o.genConns, "gen-conns", 2, "workload B: connections generating the transactions")
	flag.IntVar(&o.rate, "rate", 1000, "latency: transactions per second")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "latency: how long the generator runs")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "latency: samples of the first part of the run that are dropped")
	flag.IntVar(&o.latWorkers, "lat-workers", 4, "latency: generator connections")
	flag.BoolVar(&o.skipLat, "skip-latency", false, "skip the latency measurement")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each Tideline throughput run: FILE for workload A, FILE.single for B, FILE.mysql for M-A, FILE.mysql.single for M-B, FILE.sink.TARGET for each sink run of S")
	flag.StringVar(&o.compress, "compression", "lz4", "kafka.compression for Tideline (lz4, zstd, snappy, gzip, none)")
	flag.BoolVar(&o.skipMySQL, "skip-mysql", false, "skip the MySQL (MariaDB) workloads M-A and M-B")
	flag.IntVar(&o.mysqlBig, "mysql-big", 1_000_000, "workload M-A: rows inserted into MariaDB in transactions of -tx-size rows (0 skips it)")
	flag.IntVar(&o.mysqlSingle, "mysql-single", defaultMySQLSingle, "workload M-B: single-row transactions on MariaDB (0 skips it)")
	flag.IntVar(&o.sinkRows, "sink-rows", 1_000_000, "workload S: changes applied by each sink (4/5 inserts, 1/5 updates; 0 skips it)")
	flag.StringVar(&o.sinkTargets, "sink-targets", strings.Join(sinkTargets, ","), "workload S: the targets, comma-separated (its MariaDB is its own: -skip-mysql does not skip it)")
	flag.IntVar(&o.sinkBatchRecords, "sink-batch-records", 0, "workload S: batch_records of the warehouse sinks (0: the config's default)")
	flag.StringVar(&o.latencyCSV, "latency-csv", "", "write every latency sample (commit time, latency) to this CSV file")
	flag.Parse()
	if o.rounds < 1 || o.txSize < 1 || o.genConns < 1 || o.rate < 1 || o.latWorkers < 1 || o.duration <= o.warmup {
		fmt.Fprintln(os.Stderr, "tideline-bench: -rounds, -tx-size, -gen-conns, -rate and -lat-workers must be positive, and -duration longer than -warmup")
		os.Exit(2)
	}
	if _, err := parseSinkTargets(o.sinkTargets); err != nil {
		fmt.Fprintln(os.Stderr, "tideline-bench:", err)
		os.Exit(2)
	}

	// go-mysql's BinlogSyncer logs through slog.Default() when given no
	// logger (Tideline's MySQL source gives it none): only its warnings.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	// Ctrl-C cancels ctx; run's deferred stops then shut PostgreSQL and the
	// broker down before the process exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tideline-bench:", err)
		os.Exit(1)
	}
}

// run starts the servers, runs the workloads and prints the report.
func run(ctx context.Context, o options) (err error) {
	started := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}
	load0 := loadAvg()
	logf("load average %s on %d CPUs before the run (anything else running skews the figures)", load0, runtime.NumCPU())
	mem := startMem()
	defer mem.stop()

	b, err := newBench(ctx, o, logf, mem)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(); err == nil {
			err = cerr
		}
	}()
	if err := b.setupSchema(ctx); err != nil {
		return err
	}
	facts := b.machineFacts(ctx)
	facts.loadStart = load0

	var rep report
	rep.facts = facts
	if o.big > 0 {
		rep.big, rep.bigBinary = b.workloadBig(ctx)
	}
	if ctx.Err() == nil && o.single > 0 {
		rep.single = b.workloadSingle(ctx)
	}
	if ctx.Err() == nil && !o.skipLat {
		rep.latency = b.workloadLatency(ctx)
	}
	if ctx.Err() == nil && !o.skipMySQL && (o.mysqlBig > 0 || o.mysqlSingle > 0) {
		rep.mysql = b.workloadsMySQL(ctx)
	}
	if ctx.Err() == nil && o.sinkRows > 0 {
		rep.sinks = b.workloadSinks(ctx)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	rep.vmHWM, rep.vmRSS, rep.heapPeak, rep.heapEnd = mem.totals()
	rep.took = time.Since(started)
	rep.print(os.Stdout, o)
	logf("done")
	return nil
}
