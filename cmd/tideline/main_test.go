package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(args ...string) (string, error) {
	var out bytes.Buffer
	cmd := rootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nsource:\n  type: postgres\n  tables: [a]\nkafka:\n  brokerz: [b]\n"), 0o600)
	out, err := run("validate", "--config", bad)
	if err == nil {
		t.Fatal("validate accepted a bad config")
	}
	for _, want := range []string{"source.dsn: is required", "source.tables[0]:", "kafka.brokerz: unknown key"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("name: x\nsource:\n  type: postgres\n  dsn: postgres://u@h:5432/db\n  tables: [public.a]\n"), 0o600)
	if out, err := run("validate", "--config", good); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("good config: %v\n%s", err, out)
	}
	if out, err := run("version"); err != nil || !strings.HasPrefix(out, "tideline ") {
		t.Fatalf("version: %v %q", err, out)
	}
}
