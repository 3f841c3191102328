package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// startAttempts bounds the retries on a new port when another process took the free one.
	startAttempts = 3
	// stopGrace is how long a server gets to shut down cleanly before it is killed.
	stopGrace = 30 * time.Second
	// probeInterval is the pause between readiness checks.
	probeInterval = 100 * time.Millisecond
	// logTailBytes is how much of the server log an error quotes.
	logTailBytes = 4096
)

var (
	// errNotReady marks a readiness probe failure worth retrying.
	errNotReady = errors.New("not ready")
	// errPortInUse marks a start that failed because the port was taken.
	errPortInUse = errors.New("port in use")
)

// server is the lifecycle shared by the PostgreSQL and MariaDB servers: one child process on a
// fixed port in a directory, started, probed until ready, stopped, killed and restarted.
//
// Its methods are safe for concurrent use and are serialized by mu; a Restart holds mu while the
// server comes up, so a concurrent Stop waits for it.
type server struct {
	name         string // what to call it in messages, e.g. "postgres"
	dir          string
	ownDir       bool // dir was created here and is removed by Stop
	logPath      string
	cred         *syscall.Credential // user the server runs as; nil: ours
	stopSignal   os.Signal
	readyTimeout time.Duration
	logf         func(format string, args ...any)

	// configure writes the server's configuration for port; it runs before every start.
	configure func(port int) error
	// command builds the server command; it runs before every start.
	command func() *exec.Cmd
	// probe checks readiness once; errors wrapping errNotReady are retried, others are final.
	probe func(ctx context.Context) error

	// port is set before the server is handed out and never changes after, so it is read
	// without mu.
	port int

	mu      sync.Mutex
	proc    *proc // nil when not running
	stopped bool
}

// start brings the server up for the first time, each attempt on a new free port.
func (s *server) start(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return err
		}
		s.port = port
		err = s.startOnce(ctx)
		if err == nil || attempt == startAttempts || !errors.Is(err, errPortInUse) {
			return err
		}
		s.logf("testenv: %s: port %d was taken, retrying on another", s.name, port)
	}
}

// startOnce starts the server on s.port and waits until it is ready. On failure the process is
// gone and the error quotes the end of the server log. The caller holds mu or owns s alone.
func (s *server) startOnce(ctx context.Context) error {
	if err := s.configure(s.port); err != nil {
		return err
	}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open %s log: %w", s.name, err)
	}
	offset, err := logFile.Seek(0, io.SeekEnd)
	if err == nil {
		err = chown(s.logPath, s.cred)
	}
	if err != nil {
		_ = logFile.Close()
		return fmt.Errorf("prepare %s log %s: %w", s.name, s.logPath, err)
	}
	cmd := s.command()
	// The child writes straight to the file: no copying goroutine, and the log survives a kill.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "HOME="+s.dir)
	cmd.SysProcAttr = sysProcAttr(s.cred)
	p, err := startProc(cmd)
	_ = logFile.Close() // the child holds its own descriptor
	if err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	if err := s.waitReady(ctx, p); err != nil {
		p.kill()
		tail := logTail(s.logPath, offset)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("%s (dir %s) on 127.0.0.1:%d did not become ready: %w\n--- tail of %s ---\n%s",
			s.name, s.dir, s.port, err, s.logPath, tail)
	}
	s.proc = p
	s.logf("testenv: %s listening on 127.0.0.1:%d (dir %s, pid %d)", s.name, s.port, s.dir, cmd.Process.Pid)
	return nil
}

// waitReady probes until the server is ready, exits, or readyTimeout passes.
func (s *server) waitReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		err := s.probe(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errNotReady) {
			return err
		}
		select {
		case <-p.done:
			return fmt.Errorf("server exited (%v); last probe: %w", p.err, err)
		case <-ctx.Done():
			return fmt.Errorf("%w; last probe: %w", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Stop shuts the server down with stopSignal, kills it if it does not exit within stopGrace,
// and removes dir if it was created here. Later calls do nothing and return nil.
func (s *server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	if s.proc != nil {
		errs = append(errs, s.proc.stop(s.stopSignal, stopGrace))
		s.proc = nil
	}
	if s.ownDir {
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s dir: %w", s.name, err))
		}
	}
	s.logf("testenv: %s on 127.0.0.1:%d stopped", s.name, s.port)
	return errors.Join(errs...)
}

// Kill ends the server with SIGKILL, as a crash would, and waits until it is gone. The data stays
// for Restart.
func (s *server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
}

// Restart shuts the server down cleanly if it is running, then starts it again on the same
// directory and port and waits until it is ready.
func (s *server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return fmt.Errorf("restart %s: already stopped", s.name)
	}
	if s.proc != nil {
		err := s.proc.stop(s.stopSignal, stopGrace)
		s.proc = nil
		if err != nil {
			return fmt.Errorf("restart %s: %w", s.name, err)
		}
	}
	return s.startOnce(ctx)
}

// pid returns the server's process id, or 0 when it is not running.
func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// logTail returns the end of the log written since offset, cut to whole lines.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	from := max(offset, end-logTailBytes)
	buf := make([]byte, end-from)
	if _, err := f.ReadAt(buf, from); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	text := string(buf)
	if from > offset {
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			text = text[i+1:]
		}
	}
	if text == "" {
		return "(log is empty)"
	}
	return strings.TrimRight(text, "\n")
}
