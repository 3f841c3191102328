package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"time"
)

// proc is a child process started by this package.
//
// On Linux every child gets SysProcAttr.Pdeathsig = SIGKILL so it dies with this process. The
// kernel ties that signal to the thread that forked the child, not to the process: if that thread
// exits, the child is killed even though we are alive. The Go runtime ends a thread when a
// goroutine that locked it exits without unlocking, and any goroutine may later run on (and lock)
// the thread that called fork. So the child is started and waited for by one owner goroutine that
// holds runtime.LockOSThread for the child's whole life: the forking thread cannot be handed to
// anyone else, and it stays blocked in wait(2) until the child is gone. That goroutine exits right
// after Wait returns, and done tells everyone it has.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed by the owner goroutine after Wait returned
	err  error         // Wait's result; read only after done is closed
}

// startProc starts cmd (whose SysProcAttr the caller set) on a dedicated locked OS thread.
func startProc(cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		runtime.LockOSThread()
		// Unlock only once the child is reaped: from then on the thread may be reused freely.
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			p.err = err
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
	}()
	if err := <-started; err != nil {
		<-p.done
		return nil, err
	}
	return p, nil
}

// kill ends the child and its own children with SIGKILL and waits until they are gone. The
// children matter for PostgreSQL: its backends run in their own sessions, outlive a killed
// postmaster for a moment, and a new postmaster refuses to start while they still hold the old
// shared memory.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	killChildren(p.cmd.Process.Pid)
	_ = p.cmd.Process.Kill() // fails only if the child is already gone, which is what we want
	<-p.done
}

// stop sends sig and waits up to grace for the child to exit, then kills it. It returns an error
// only when the child had to be killed or could not be signalled.
func (p *proc) stop(sig os.Signal, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.kill()
		return fmt.Errorf("signal %s (pid %d): %w", p.cmd.Path, p.cmd.Process.Pid, err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		p.kill()
		return fmt.Errorf("%s (pid %d) did not exit within %v of %v, killed it",
			p.cmd.Path, p.cmd.Process.Pid, grace, sig)
	}
}

// run runs a short command (initdb, an admin client) to completion and returns its combined
// output. Cancelling ctx kills it.
func run(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A grandchild (install scripts start the server) may keep the output pipe open after the
	// child died; WaitDelay bounds how long Wait waits for it.
	cmd.WaitDelay = 5 * time.Second
	p, err := startProc(cmd)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return out.Bytes(), p.err
	case <-ctx.Done():
		p.kill()
		return out.Bytes(), ctx.Err()
	}
}
