package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// mariaDBDirs are searched after PATH: Debian puts the server in /usr/sbin, which is not in
// every PATH.
var mariaDBDirs = []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"}

// MariaDBOptions configures StartMariaDB. The zero value is ready to use.
type MariaDBOptions struct {
	// ExtraConf holds more [mysqld] settings, written after the defaults so they override them.
	// An empty value writes the bare key (a flag such as "skip-log-bin").
	ExtraConf map[string]string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// MariaDB is a MariaDB server started by StartMariaDB. Its methods are safe for concurrent use.
type MariaDB struct {
	srv   *server
	admin string // mariadb-admin or mysqladmin
}

// StartMariaDB creates a new data directory with mariadb-install-db and starts mariadbd on it,
// listening on 127.0.0.1 on a free port, with a row-based binlog (log_bin=<dir>/binlog,
// binlog_format=ROW, binlog_row_image=FULL, server_id=1). User root@localhost has no password.
// It returns once root can log in over TCP. The caller must call Stop.
//
// The binaries are looked up in PATH, then /usr/sbin and friends; when they are missing the error
// matches ErrNotInstalled. When this process is root the server runs as the mysql system user.
func StartMariaDB(ctx context.Context, o MariaDBOptions) (*MariaDB, error) {
	if o.Logf == nil {
		o.Logf = nopLogf
	}
	if err := validateConf(o.ExtraConf); err != nil {
		return nil, fmt.Errorf("mariadb options: %w", err)
	}
	installDB, errI := findBinary("mariadb-install-db", "mysql_install_db")
	mariadbd, errD := findBinary("mariadbd", "mysqld")
	admin, errA := findBinary("mariadb-admin", "mysqladmin")
	if errI != nil || errD != nil || errA != nil {
		return nil, &notInstalledError{msg: "MariaDB server binaries not found in PATH or /usr/sbin: " +
			errors.Join(errI, errD, errA).Error() + ": install the mariadb-server package"}
	}
	cred, err := serviceCredential("mysql")
	if err != nil {
		return nil, err
	}
	dir, own, err := prepareDir("", "testenv-mariadb-*", cred)
	if err != nil {
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	m := &MariaDB{admin: admin}
	cnf := filepath.Join(dir, "my.cnf")
	m.srv = &server{
		name:         "mariadbd",
		dir:          dir,
		ownDir:       own,
		logPath:      filepath.Join(dir, "mariadb.log"),
		cred:         cred,
		stopSignal:   syscall.SIGTERM, // normal shutdown
		readyTimeout: 60 * time.Second,
		logf:         o.Logf,
		configure: func(port int) error {
			return writeOwnedFile(cnf, mariaDBConf(o, port, dir), cred)
		},
		// --defaults-file must be the first argument.
		command: func() *exec.Cmd { return exec.Command(mariadbd, "--defaults-file="+cnf) },
		probe:   m.probe,
	}
	err = m.init(ctx, installDB)
	if err == nil {
		err = m.srv.start(ctx)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return m, nil
}

// init creates the system tables.
func (m *MariaDB) init(ctx context.Context, installDB string) error {
	s := m.srv
	dataDir := filepath.Join(s.dir, "data")
	s.logf("testenv: %s %s", filepath.Base(installDB), dataDir)
	cmd := exec.CommandContext(ctx, installDB,
		"--no-defaults", // ignore /etc/mysql and ~/.my.cnf
		"--datadir="+dataDir,
		"--auth-root-authentication-method=normal", // root with no password, also over TCP
		"--skip-test-db",
	)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "HOME="+s.dir)
	cmd.SysProcAttr = sysProcAttr(s.cred)
	if out, err := run(ctx, cmd); err != nil {
		return fmt.Errorf("%s --datadir=%s: %w\n%s", installDB, dataDir, err, bytes.TrimSpace(out))
	}
	return nil
}

// probe pings the server; once it answers, it checks that root can log in over TCP. A ping
// answers even when login is refused, so only the second check proves the DSN works.
func (m *MariaDB) probe(ctx context.Context) error {
	if _, err := m.adminCmd(ctx, "ping"); err != nil {
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	if _, err := m.adminCmd(ctx, "status"); err != nil {
		return err
	}
	return nil
}

// adminCmd runs mariadb-admin as root over TCP.
func (m *MariaDB) adminCmd(ctx context.Context, command string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.admin, "--no-defaults", "--protocol=TCP", "-h127.0.0.1",
		"-P"+strconv.Itoa(m.srv.port), "-uroot", "--connect-timeout=2", command)
	cmd.SysProcAttr = sysProcAttr(nil)
	out, err := run(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(m.admin), command, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (m *MariaDB) Port() int { return m.srv.port }

// DSN returns a go-sql-driver/mysql style DSN for root over TCP, with no database selected.
func (m *MariaDB) DSN() string { return fmt.Sprintf("root@tcp(127.0.0.1:%d)/", m.srv.port) }

// Dir returns the server's directory: data/, my.cnf, the binlog files, mariadb.log and the Unix
// socket mysqld.sock.
func (m *MariaDB) Dir() string { return m.srv.dir }

// LogPath returns the server log; every start appends to it.
func (m *MariaDB) LogPath() string { return m.srv.logPath }

// Stop shuts the server down (SIGTERM), killing it if it does not exit within 30s, and removes
// its directory. Later calls do nothing and return nil.
func (m *MariaDB) Stop() error { return m.srv.Stop() }

// Kill ends the server with SIGKILL, as a crash would, and waits until it is gone. The directory
// stays, so Restart recovers from the crash.
func (m *MariaDB) Kill() { m.srv.Kill() }

// Restart shuts the server down if it is running, starts it again on the same data directory and
// port, and returns once root can log in. It fails after Stop.
func (m *MariaDB) Restart(ctx context.Context) error { return m.srv.Restart(ctx) }

// mariaDBConf renders my.cnf. Later lines win, so ExtraConf comes last.
func mariaDBConf(o MariaDBOptions, port int, dir string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by tideline internal/testenv on every start.\n[mysqld]\n")
	set := func(k, v string) {
		if v == "" {
			fmt.Fprintf(&b, "%s\n", k)
			return
		}
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	set("datadir", filepath.Join(dir, "data"))
	set("socket", filepath.Join(dir, "mysqld.sock"))
	set("pid-file", filepath.Join(dir, "mysqld.pid"))
	set("tmpdir", dir)
	set("bind-address", "127.0.0.1")
	set("port", strconv.Itoa(port))
	set("log_bin", filepath.Join(dir, "binlog"))
	set("binlog_format", "ROW")
	set("binlog_row_image", "FULL")
	set("server_id", "1")
	for _, k := range slices.Sorted(maps.Keys(o.ExtraConf)) {
		set(k, o.ExtraConf[k])
	}
	return b.Bytes()
}

// findBinary returns the first of names found in PATH, then in mariaDBDirs.
func findBinary(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	for _, d := range mariaDBDirs {
		for _, n := range names {
			if p := filepath.Join(d, n); isExecutable(p) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no %s", names[0])
}
