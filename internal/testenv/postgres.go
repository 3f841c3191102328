package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgLibGlob is where Debian and Ubuntu install each PostgreSQL major version's server binaries.
const pgLibGlob = "/usr/lib/postgresql/*/bin"

// PGOptions configures StartPostgres. The zero value is ready to use.
type PGOptions struct {
	// WALLevel is the wal_level setting; empty means "logical".
	WALLevel string
	// ExtraConf holds more postgresql.conf settings. They are written after the defaults, so they
	// override them (port, listen_addresses and unix_socket_directories included: don't).
	ExtraConf map[string]string
	// Dir is the directory the server lives in: data/ (the data directory), postgres.log and the
	// Unix socket. Empty means a new temp dir, removed by Stop; a given Dir is kept, and must not
	// hold a data/ directory yet. When running as root, Dir is handed to the postgres user, and its
	// parents must be searchable by that user (t.TempDir() is not: its parent is root-only).
	Dir string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Postgres is a PostgreSQL server started by StartPostgres. Its methods are safe for concurrent
// use.
type Postgres struct {
	srv     *server
	dataDir string
}

// StartPostgres creates a new cluster with initdb and starts a PostgreSQL server on it, listening
// on 127.0.0.1 on a free port and configured for logical replication. It returns once the server
// accepts connections. The caller must call Stop.
//
// The server binaries come from the highest version under /usr/lib/postgresql/*/bin that has
// them, else from PATH; when there are none the error matches ErrNotInstalled. When this process
// is root the server runs as the postgres system user.
func StartPostgres(ctx context.Context, o PGOptions) (*Postgres, error) {
	if o.WALLevel == "" {
		o.WALLevel = "logical"
	}
	if o.Logf == nil {
		o.Logf = nopLogf
	}
	if err := validateConf(o.ExtraConf); err != nil {
		return nil, fmt.Errorf("postgres options: %w", err)
	}
	initdb, postgres, err := findPostgres(pgLibGlob)
	if err != nil {
		return nil, err
	}
	cred, err := serviceCredential("postgres")
	if err != nil {
		return nil, err
	}
	dir, own, err := prepareDir(o.Dir, "testenv-pg-*", cred)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pg := &Postgres{dataDir: filepath.Join(dir, "data")}
	pg.srv = &server{
		name:         "postgres",
		dir:          dir,
		ownDir:       own,
		logPath:      filepath.Join(dir, "postgres.log"),
		cred:         cred,
		stopSignal:   syscall.SIGINT, // fast shutdown: abort sessions, checkpoint, exit
		readyTimeout: 30 * time.Second,
		logf:         o.Logf,
		configure: func(port int) error {
			return writeOwnedFile(filepath.Join(pg.dataDir, "testenv.conf"), pgConf(o, port, dir), cred)
		},
		command: func() *exec.Cmd { return exec.Command(postgres, "-D", pg.dataDir) },
		probe:   pg.probe,
	}
	err = pg.init(ctx, initdb)
	if err == nil {
		err = pg.srv.start(ctx)
	}
	if err != nil {
		if own {
			_ = os.RemoveAll(dir)
		}
		return nil, err
	}
	return pg, nil
}

// init creates the cluster and makes its configuration include testenv.conf.
func (pg *Postgres) init(ctx context.Context, initdb string) error {
	s := pg.srv
	s.logf("testenv: initdb %s", pg.dataDir)
	cmd := exec.CommandContext(ctx, initdb,
		"-D", pg.dataDir,
		"--auth=trust",
		"--username=postgres",
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync",
	)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "HOME="+s.dir)
	cmd.SysProcAttr = sysProcAttr(s.cred)
	if out, err := run(ctx, cmd); err != nil {
		return fmt.Errorf("%s -D %s: %w\n%s", initdb, pg.dataDir, err, bytes.TrimSpace(out))
	}
	if err := ensureReplicationHBA(filepath.Join(pg.dataDir, "pg_hba.conf")); err != nil {
		return err
	}
	confPath := filepath.Join(pg.dataDir, "postgresql.conf")
	f, err := os.OpenFile(confPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", confPath, err)
	}
	_, err = f.WriteString("\n# Added by tideline internal/testenv; testenv.conf is rewritten on every start.\ninclude 'testenv.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to %s: %w", confPath, err)
	}
	return nil
}

// probe connects once and pings.
func (pg *Postgres) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	return nil
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (pg *Postgres) Port() int { return pg.srv.port }

// DSN returns a URL connecting as superuser postgres to database db over TCP.
func (pg *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.srv.port, url.PathEscape(db))
}

// Dir returns the server's directory: it holds data/ (the data directory), postgres.log and the
// Unix socket, so `psql -h Dir() -p Port() -U postgres` works too.
func (pg *Postgres) Dir() string { return pg.srv.dir }

// LogPath returns the server log; every start appends to it.
func (pg *Postgres) LogPath() string { return pg.srv.logPath }

// Exec connects to database db, runs sql with args and disconnects. Without args, sql may hold
// several statements.
func (pg *Postgres) Exec(ctx context.Context, db, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, pg.DSN(db))
	if err != nil {
		return fmt.Errorf("connect to postgres db %q: %w", db, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("exec on postgres db %q: %w", db, err)
	}
	return nil
}

// CreateDB creates database name.
func (pg *Postgres) CreateDB(ctx context.Context, name string) error {
	return pg.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// Stop shuts the server down (fast shutdown), killing it if it does not exit within 30s, and
// removes its directory if StartPostgres created it. Later calls do nothing and return nil.
func (pg *Postgres) Stop() error { return pg.srv.Stop() }

// Kill ends the server with SIGKILL, as a crash would, and waits until it is gone. The directory
// stays, so Restart recovers from the crash.
func (pg *Postgres) Kill() { pg.srv.Kill() }

// Restart shuts the server down if it is running, starts it again on the same data directory and
// port, and returns once it accepts connections. It fails after Stop.
func (pg *Postgres) Restart(ctx context.Context) error { return pg.srv.Restart(ctx) }

// findPostgres returns the paths of initdb and postgres, from the highest version dir matching
// glob that has both, else from PATH.
func findPostgres(glob string) (initdb, postgres string, err error) {
	dirs, err := filepath.Glob(glob)
	if err != nil {
		return "", "", fmt.Errorf("find postgres binaries: %w", err)
	}
	// Highest major version first. A version dir may hold only the client (postgresql-client-N
	// installs psql there), so take the first one that has the server.
	slices.SortFunc(dirs, func(a, b string) int {
		return pgVersion(b).Compare(pgVersion(a))
	})
	for _, d := range dirs {
		i, p := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
		if isExecutable(i) && isExecutable(p) {
			return i, p, nil
		}
	}
	i, errI := exec.LookPath("initdb")
	p, errP := exec.LookPath("postgres")
	if errI == nil && errP == nil {
		return i, p, nil
	}
	return "", "", &notInstalledError{msg: "PostgreSQL server binaries not found under " + glob +
		" (nor initdb and postgres in PATH): install the postgresql package"}
}

// pgVersion parses the version directory of a /usr/lib/postgresql/<version>/bin path.
func pgVersion(binDir string) versionKey {
	v := filepath.Base(filepath.Dir(binDir))
	major, minor, _ := strings.Cut(v, ".")
	var k versionKey
	k.major, _ = strconv.Atoi(major)
	k.minor, _ = strconv.Atoi(minor)
	return k
}

type versionKey struct{ major, minor int }

func (a versionKey) Compare(b versionKey) int {
	if a.major != b.major {
		return a.major - b.major
	}
	return a.minor - b.minor
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// pgConf renders testenv.conf. Later lines win in postgresql.conf, so ExtraConf comes last.
func pgConf(o PGOptions, port int, socketDir string) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by tideline internal/testenv on every start.\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''")) }
	set("listen_addresses", "127.0.0.1")
	set("port", strconv.Itoa(port))
	set("unix_socket_directories", socketDir)
	set("wal_level", o.WALLevel)
	set("max_replication_slots", "20")
	set("max_wal_senders", "20")
	set("wal_sender_timeout", "60s")
	set("max_connections", "100")
	set("shared_buffers", "128MB")
	// Throwaway data: skip the flushes. synchronous_commit stays on so a commit's reply still
	// means the WAL was written, which the crash tests rely on.
	set("fsync", "off")
	set("full_page_writes", "off")
	for _, k := range slices.Sorted(maps.Keys(o.ExtraConf)) {
		set(k, o.ExtraConf[k])
	}
	return b.Bytes()
}

// ensureReplicationHBA makes sure replication connections from 127.0.0.1 are trusted. initdb
// --auth=trust writes such a line; append one if a packaging or version difference left it out.
func ensureReplicationHBA(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[0] == "host" && f[1] == "replication" && f[2] == "all" &&
			f[3] == "127.0.0.1/32" && f[4] == "trust" {
			return nil
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, err = f.WriteString("\nhost replication all 127.0.0.1/32 trust\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to %s: %w", path, err)
	}
	return nil
}

// validateConf reports every setting that cannot be written as one config line.
func validateConf(conf map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		if k == "" || strings.ContainsAny(k, " \t\r\n=#'\"[]") {
			errs = append(errs, fmt.Errorf("ExtraConf key %q: not a setting name", k))
		}
		if strings.ContainsAny(conf[k], "\r\n") {
			errs = append(errs, fmt.Errorf("ExtraConf[%q]: value holds a line break", k))
		}
	}
	return errors.Join(errs...)
}
