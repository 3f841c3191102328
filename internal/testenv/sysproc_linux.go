//go:build linux

package testenv

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sysProcAttr runs a child in its own process group, so a Ctrl-C in the terminal reaches only
// this process, which then stops the child in order; as the user in cred (nil: ours); and with
// SIGKILL as its parent-death signal. Go sets Pdeathsig after switching credentials, so the
// kernel does not clear it on the uid change.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}

// killChildren SIGKILLs the children of pid and waits until each has exited.
//
// pid is stopped first, so it forks no child after the scan below and reaps none: every pid
// found stays a live process or a zombie of pid until pid dies, so no kill here can hit a
// process that reused a pid. The caller then kills pid itself.
func killChildren(pid int) {
	if syscall.Kill(pid, syscall.SIGSTOP) != nil {
		return // already gone
	}
	kids := childPIDs(pid)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	// SIGKILL is delivered asynchronously; a process has released its memory (and its attachment
	// to shared memory) by the time it is a zombie.
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range kids {
		for !exited(k) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		k, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(k); ok && ppid == pid {
			kids = append(kids, k)
		}
	}
	return kids
}

// exited reports whether pid is gone or a zombie.
func exited(pid int) bool {
	_, state, ok := procStat(pid)
	return !ok || state == 'Z'
}

// procStat reads the parent pid and state of pid from /proc/<pid>/stat.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name in parentheses may hold spaces; the fields after the last ')' are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, f[0][0], true
}
