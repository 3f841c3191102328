//go:build unix && !linux

package testenv

import "syscall"

// sysProcAttr runs a child in its own process group and as the user in cred (nil: ours). Only
// Linux has a parent-death signal: elsewhere a child outlives this process if it dies without
// calling Stop.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// killChildren does nothing here: without /proc there is no portable way to list children.
// PostgreSQL backends notice the postmaster's death and exit by themselves.
func killChildren(int) {}
