package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/internal/testenv"
)

// bench is one run's servers and settings.
type bench struct {
	o       options
	logf    func(format string, args ...any)
	pg      *testenv.Postgres
	kafka   *kfake.Cluster
	dsn     string
	brokers []string
	// recvlogical is the pg_recvlogical binary.
	recvlogical string
	mem         *mem
}

// newBench starts PostgreSQL and the broker. The caller must call close.
func newBench(ctx context.Context, o options, logf func(string, ...any), m *mem) (*bench, error) {
	recv, err := findRecvlogical()
	if err != nil {
		return nil, err
	}
	logf("starting PostgreSQL")
	pg, err := testenv.StartPostgres(ctx, testenv.PGOptions{
		// Server-wide settings only keep checkpoints out of the measured
		// windows; synchronous_commit is relaxed per session by the load
		// generators, so the latency run commits as a real database would.
		ExtraConf: map[string]string{
			"max_wal_size":       "8GB",
			"checkpoint_timeout": "30min",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	k, err := testenv.StartKafka()
	if err != nil {
		_ = pg.Stop()
		return nil, err
	}
	b := &bench{o: o, logf: logf, pg: pg, kafka: k, dsn: pg.DSN("postgres"), brokers: k.ListenAddrs(), recvlogical: recv, mem: m}
	logf("PostgreSQL at %s (log %s), kfake broker at %v", b.dsn, pg.LogPath(), b.brokers)
	return b, nil
}

// close stops the broker and PostgreSQL. It runs on Ctrl-C too.
func (b *bench) close() error {
	b.kafka.Close()
	if err := b.pg.Stop(); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	b.logf("PostgreSQL and the broker stopped")
	return nil
}

// findRecvlogical returns pg_recvlogical of the newest PostgreSQL under
// /usr/lib/postgresql (the server testenv runs comes from there too), else
// from PATH.
func findRecvlogical() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return majorOf(b) - majorOf(a) })
	for _, d := range dirs {
		p := filepath.Join(d, "pg_recvlogical")
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("pg_recvlogical")
	if err != nil {
		return "", errors.New("pg_recvlogical not found under /usr/lib/postgresql/*/bin nor in PATH: install postgresql-client")
	}
	return p, nil
}

func majorOf(binDir string) int {
	var n int
	fmt.Sscanf(filepath.Base(filepath.Dir(binDir)), "%d", &n)
	return n
}

func (b *bench) connect(ctx context.Context) (*pgx.Conn, error) {
	c, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return c, nil
}

// exec runs one or more statements on a new connection.
func (b *bench) exec(ctx context.Context, sql string, args ...any) error {
	return b.pg.Exec(ctx, "postgres", sql, args...)
}

// createSlots creates logical slots (pgoutput) one after the other with no
// writes in between, so they all start at the same point of the WAL.
func (b *bench) createSlots(ctx context.Context, names ...string) error {
	for _, n := range names {
		if err := b.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", n); err != nil {
			return fmt.Errorf("create slot %s: %w", n, err)
		}
	}
	return nil
}

// dropSlots drops slots that exist; it waits a little for a slot still held
// by a walsender that is shutting down.
func (b *bench) dropSlots(names ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range names {
		var err error
		for range 50 {
			err = b.exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", n)
			if err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			b.logf("drop slot %s: %v", n, err)
		}
	}
}

// endOfLoad returns the position just past the load's last commit record,
// and then writes and flushes one more WAL record so that a reader's
// position passes it: pg_recvlogical's --endpos stops only on a position at
// or past it. The record is a logical message, which pgoutput does not send
// (messages are off), so neither reader sees a change for it.
func (b *bench) endOfLoad(ctx context.Context) (pglogrepl.LSN, error) {
	c, err := b.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var s string
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	end, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("WAL position %q: %w", s, err)
	}
	// Transactional with synchronous_commit on: its commit flushes the
	// WAL of the load (generated with synchronous_commit off) too.
	if _, err := c.Exec(ctx, "SELECT pg_logical_emit_message(true, 'tideline-bench', 'end of load')"); err != nil {
		return 0, fmt.Errorf("write end marker: %w", err)
	}
	if err := b.settle(ctx); err != nil {
		return 0, err
	}
	return end, nil
}

// settle writes the load's dirty buffers out with a checkpoint, so that
// no measured window pays for them.
func (b *bench) settle(ctx context.Context) error {
	if err := b.exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// walLSN returns the current WAL insert position.
func (b *bench) walLSN(ctx context.Context, c *pgx.Conn) (pglogrepl.LSN, error) {
	var s string
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// slotConfirmed returns the slot's confirmed_flush_lsn (0 when unknown).
func (b *bench) slotConfirmed(ctx context.Context, slot string) pglogrepl.LSN {
	c, err := b.connect(ctx)
	if err != nil {
		return 0
	}
	defer c.Close(context.Background())
	var s *string
	if err := c.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s); err != nil || s == nil {
		return 0
	}
	lsn, _ := pglogrepl.ParseLSN(*s)
	return lsn
}

// deleteTopics deletes the topics with the prefix, so the broker (which
// keeps everything in memory) does not carry one workload into the next.
func (b *bench) deleteTopics(prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...))
	if err != nil {
		b.logf("delete topics %s*: %v", prefix, err)
		return
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	names, err := adm.ListTopics(ctx)
	if err != nil {
		b.logf("delete topics %s*: %v", prefix, err)
		return
	}
	var del []string
	for _, t := range names.Names() {
		if strings.HasPrefix(t, prefix) {
			del = append(del, t)
		}
	}
	if len(del) == 0 {
		return
	}
	if _, err := adm.DeleteTopics(ctx, del...); err != nil {
		b.logf("delete topics %v: %v", del, err)
	}
}

// facts describes the machine the figures were measured on.
type facts struct {
	cpus       int
	cpuModel   string
	goVersion  string
	gomaxprocs int
	pgVersion  string
	recv       string
	loadStart  string
}

func (b *bench) machineFacts(ctx context.Context) facts {
	f := facts{cpus: runtime.NumCPU(), goVersion: runtime.Version(), gomaxprocs: runtime.GOMAXPROCS(0), cpuModel: cpuModel()}
	if c, err := b.connect(ctx); err == nil {
		_ = c.QueryRow(ctx, "SELECT version()").Scan(&f.pgVersion)
		c.Close(context.Background())
	}
	if out, err := exec.CommandContext(ctx, b.recvlogical, "--version").Output(); err == nil {
		f.recv = strings.TrimSpace(string(out))
	}
	return f
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAvg returns the 1, 5 and 15 minute load averages: the figures are only
// comparable when nothing else ran.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], "/")
}
