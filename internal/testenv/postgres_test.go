package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestPostgres(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pg := NewPostgres(t, PGOptions{ExtraConf: map[string]string{"application_name": "it's testenv"}})

	if got := queryString(t, pg, "SHOW wal_level"); got != "logical" {
		t.Fatalf("wal_level = %q, want logical", got)
	}
	if got := queryString(t, pg, "SHOW port"); got != strconv.Itoa(pg.Port()) {
		t.Fatalf("port = %s, want %d", got, pg.Port())
	}
	if got := queryString(t, pg, "SHOW application_name"); got != "it's testenv" {
		// The setting is a server default; the client does not send one through our DSN.
		t.Fatalf("application_name = %q, want the ExtraConf value", got)
	}
	if err := pg.CreateDB(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", `INSERT INTO t VALUES ($1)`, 2); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", `SELECT pg_create_logical_replication_slot('s1', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}

	// pg_hba must let a replication connection in over TCP.
	rc, err := pgconn.Connect(ctx, pg.DSN("app")+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	if _, err := rc.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	_ = rc.Close(ctx)

	// A crash, then recovery on the same port: committed rows and the slot survive.
	oldPID := pg.srv.pid()
	pg.Kill()
	if !exited(oldPID) {
		t.Fatalf("postmaster %d still running after Kill", oldPID)
	}
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, pg, "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 's1' AND plugin = 'pgoutput'"); got != "1" {
		t.Fatalf("slot s1 after restart: count = %s, want 1", got)
	}
	conn := connect(t, pg, "app")
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("rows after crash = %d, want 2", n)
	}
	conn.Close(ctx)

	// A clean restart too.
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	pid := pg.srv.pid()
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if !exited(pid) {
		t.Fatalf("postmaster %d still running after Stop", pid)
	}
	if _, err := os.Stat(pg.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir %s after Stop: %v, want it removed", pg.Dir(), err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := pg.Restart(ctx); err == nil {
		t.Fatal("Restart after Stop succeeded")
	}
}

func TestPostgresOptionErrors(t *testing.T) {
	t.Parallel()
	_, err := StartPostgres(t.Context(), PGOptions{ExtraConf: map[string]string{
		"bad key": "1",
		"ok":      "line\nbreak",
	}})
	if err == nil {
		t.Fatal("StartPostgres accepted bad ExtraConf")
	}
	for _, want := range []string{`"bad key"`, `ExtraConf["ok"]`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, _, err := findPostgres(t.TempDir() + "/*/bin")
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "install the postgresql package") {
		t.Fatalf("err = %v, want ErrNotInstalled naming the package", err)
	}
}

func TestPostgresStartFailure(t *testing.T) {
	t.Parallel()
	_, err := StartPostgres(t.Context(), PGOptions{ExtraConf: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		t.Fatal("StartPostgres succeeded with a bad setting")
	}
	// The error quotes the server log, which names the bad setting.
	if !strings.Contains(err.Error(), "tail of") || !strings.Contains(err.Error(), `"shared_buffers"`) {
		t.Fatalf("error does not quote the server log:\n%v", err)
	}
}

// TestServerDiesWithParent starts PostgreSQL in a child test process, SIGKILLs that process and
// checks that the kernel kills the server too (Pdeathsig).
func TestServerDiesWithParent(t *testing.T) {
	if os.Getenv("TESTENV_HELPER") == "1" {
		pg, err := StartPostgres(context.Background(), PGOptions{})
		if err != nil {
			fmt.Println("TESTENV_ERR", err)
			os.Exit(1)
		}
		fmt.Printf("TESTENV_PID %d %s\n", pg.srv.pid(), pg.Dir())
		time.Sleep(time.Minute) // the parent kills us long before this
		os.Exit(1)
	}
	t.Parallel()

	cmd := exec.Command(os.Args[0], "-test.run=^TestServerDiesWithParent$")
	cmd.Env = append(os.Environ(), "TESTENV_HELPER=1")
	cmd.SysProcAttr = sysProcAttr(nil)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	var pid int
	var dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "TESTENV_ERR") {
			t.Fatal(line)
		}
		if _, err := fmt.Sscanf(line, "TESTENV_PID %d %s", &pid, &dir); err == nil {
			break
		}
	}
	if pid == 0 {
		t.Fatalf("helper did not report a server pid (scan: %v)", sc.Err())
	}
	defer os.RemoveAll(dir) // the helper died before it could

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for !exited(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postgres %d outlived its killed parent", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connect(t *testing.T, pg *Postgres, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func queryString(t *testing.T, pg *Postgres, sql string) string {
	t.Helper()
	conn := connect(t, pg, "postgres")
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(t.Context(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}
