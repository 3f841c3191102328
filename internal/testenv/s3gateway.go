package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// VersityGWVersion is the S3 gateway the tests run as a real S3 server
// (github.com/versity/versitygw, its POSIX backend): built from the Go
// module proxy once per machine.
const VersityGWVersion = "v1.8.0"

// S3Gateway is a running versitygw serving a temp directory over S3.
type S3Gateway struct {
	// Endpoint is its URL (path-style addressing, region us-east-1).
	Endpoint          string
	AccessKey, Secret string
	root              string
}

var (
	gwOnce sync.Once
	gwBin  string
	gwErr  error
)

// versitygwBin builds versitygw into a directory under the system temp
// dir (kept between runs, rebuilt when missing). A cold build downloads
// its modules and takes a minute or two on 2 cores.
func versitygwBin(ctx context.Context) (string, error) {
	gwOnce.Do(func() {
		dir := filepath.Join(os.TempDir(), "tideline-testenv-versitygw-"+VersityGWVersion)
		bin := filepath.Join(dir, "versitygw")
		if gwErr = os.MkdirAll(dir, 0o755); gwErr != nil {
			return
		}
		// Test binaries of several packages may build it at once.
		lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			gwErr = err
			return
		}
		defer lock.Close()
		if gwErr = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); gwErr != nil {
			return
		}
		defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closed next
		if _, err := os.Stat(bin); err == nil {
			gwBin = bin
			return
		}
		cmd := exec.CommandContext(ctx, "go", "install", "github.com/versity/versitygw/cmd/versitygw@"+VersityGWVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			gwErr = fmt.Errorf("go install github.com/versity/versitygw/cmd/versitygw@%s: %v\n%s", VersityGWVersion, err, out)
			return
		}
		gwBin = bin
	})
	return gwBin, gwErr
}

// NewS3Gateway starts versitygw on a free port with a fresh root
// directory; it stops when the test ends. When it cannot be built (no Go
// module proxy), the test is skipped with the reason.
func NewS3Gateway(t testing.TB) *S3Gateway {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := versitygwBin(ctx)
	if err != nil {
		t.Skipf("SKIP: the real S3 gateway could not be built, so this test cannot run (the in-process gofakes3 tests still cover S3): %v", err)
	}
	g := &S3Gateway{AccessKey: "tideline", Secret: "tideline-secret", root: t.TempDir()}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logf, err := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", g.root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+g.AccessKey, "ROOT_SECRET_ACCESS_KEY="+g.Secret)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr(nil)
	p, err := startProc(cmd)
	if err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	t.Cleanup(func() {
		_ = p.stop(syscall.SIGTERM, 10*time.Second)
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("versitygw exited: %v\n%s", p.err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw not listening on %s after 30s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.Endpoint = "http://" + addr
	t.Logf("testenv: versitygw %s listening on %s (root %s)", VersityGWVersion, addr, g.root)
	return g
}

// CreateBucket makes a bucket (a directory of the POSIX backend's root).
func (g *S3Gateway) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(g.root, name), 0o755); err != nil {
		t.Fatal(err)
	}
}
