package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

func TestMariaDB(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := NewMariaDB(t, MariaDBOptions{ExtraConf: map[string]string{"binlog_checksum": "NONE"}})

	if got := mariaDBQuery(t, m, "SHOW VARIABLES LIKE 'binlog_format'"); got != "binlog_format\tROW" {
		t.Fatalf("got %q, want binlog_format ROW", got)
	}
	if got := mariaDBQuery(t, m, "SHOW VARIABLES LIKE 'binlog_checksum'"); got != "binlog_checksum\tNONE" {
		t.Fatalf("got %q, want the ExtraConf value NONE", got)
	}
	mariaDBQuery(t, m, "CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY) ENGINE=InnoDB; INSERT INTO app.t VALUES (1)")

	pid := m.srv.pid()
	m.Kill()
	if !exited(pid) {
		t.Fatalf("mariadbd %d still running after Kill", pid)
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mariaDBQuery(t, m, "SELECT count(*) FROM app.t"); got != "1" {
		t.Fatalf("rows after crash = %s, want 1", got)
	}
	if got := mariaDBQuery(t, m, "SHOW VARIABLES LIKE 'log_bin'"); got != "log_bin\tON" {
		t.Fatalf("got %q, want log_bin ON", got)
	}

	pid = m.srv.pid()
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if !exited(pid) {
		t.Fatalf("mariadbd %d still running after Stop", pid)
	}
	if _, err := os.Stat(m.Dir()); !os.IsNotExist(err) {
		t.Fatalf("dir %s after Stop: %v, want it removed", m.Dir(), err)
	}
}

// mariaDBQuery runs sql with the mariadb client over TCP as root and returns its tab-separated
// output without column names.
func mariaDBQuery(t *testing.T, m *MariaDB, sql string) string {
	t.Helper()
	client, err := findBinary("mariadb", "mysql")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), client, "--no-defaults", "--protocol=TCP",
		"-h127.0.0.1", "-P"+strconv.Itoa(m.Port()), "-uroot", "-N", "-B", "-e", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("%s -e %q: %v\n%s", client, sql, err, out)
	}
	return string(bytes.TrimSpace(out))
}
