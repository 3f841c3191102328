// Package testenv starts throwaway database servers and Kafka clusters for tests and demos.
//
// PostgreSQL and MariaDB run from the machine's own binaries, each in a fresh temp dir on a free
// TCP port bound to 127.0.0.1, so they never touch a system server on 5432 or 3306. Kafka is an
// in-process kfake cluster.
//
// The Start functions do not depend on the testing package, so a demo program can use them; the
// wrappers NewPostgres, NewMariaDB and NewKafka add t.Cleanup and t.Fatal for tests.
//
// Every server process is a child of this process that cannot outlive it: Stop ends it (and
// removes the temp dir), and on Linux the kernel kills it with SIGKILL if this process dies first
// (see proc.go for how the parent-death signal is kept tied to a live thread). Servers run in
// their own process group, so a Ctrl-C in a terminal reaches only the program, which should then
// call Stop.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// ErrNotInstalled is matched (with errors.Is) by the error a Start function returns when the
// server binaries it needs are not on this machine. The error's own message says what to install.
var ErrNotInstalled = errors.New("server binaries not installed")

// notInstalledError carries the install hint as its message and still matches ErrNotInstalled.
type notInstalledError struct{ msg string }

func (e *notInstalledError) Error() string        { return e.msg }
func (e *notInstalledError) Is(target error) bool { return target == ErrNotInstalled }

// FreePort returns a TCP port on 127.0.0.1 that was free when it was asked for. Another process
// can take it before the caller binds it; the Start functions retry on a new port when that
// happens.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("release free port %d: %w", port, err)
	}
	return port, nil
}

// serviceCredential returns the credential to run a server as. PostgreSQL and MariaDB refuse to
// run as root, so when this process is root they run as their system user (name); otherwise they
// run as the current user and the credential is nil.
func serviceCredential(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, so the server must run as system user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid %q of user %q: %w", u.Uid, name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid %q of user %q: %w", u.Gid, name, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	// Supplementary groups are best effort: the servers here need none of them.
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	return cred, nil
}

// chown hands path to the user in cred; with a nil cred it does nothing.
func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to uid %d: %w", path, cred.Uid, err)
	}
	return nil
}

// prepareDir returns the directory a server lives in and whether this package created it (and so
// removes it on Stop). An empty dir means a new temp dir named after pattern. The directory is
// handed to the user in cred; its parents must already be searchable by that user.
func prepareDir(dir, pattern string, cred *syscall.Credential) (string, bool, error) {
	own := false
	if dir == "" {
		d, err := os.MkdirTemp("", pattern)
		if err != nil {
			return "", false, fmt.Errorf("create temp dir: %w", err)
		}
		dir, own = d, true
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("create dir %s: %w", dir, err)
	}
	if err := chown(dir, cred); err != nil {
		if own {
			_ = os.RemoveAll(dir)
		}
		return "", false, err
	}
	return dir, own, nil
}

// writeOwnedFile writes a config file readable by the server user.
func writeOwnedFile(path string, data []byte, cred *syscall.Credential) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return chown(path, cred)
}

func nopLogf(string, ...any) {}
