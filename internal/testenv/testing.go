package testenv

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// The wrappers are named New* because Go does not allow a function and a type of the same name
// in one package: Postgres and MariaDB are the server types.

// NewPostgres starts a PostgreSQL server for the test and stops it in t.Cleanup. o.Logf defaults to
// t.Logf. Missing binaries fail the test (the message says what to install); they never skip it,
// so a machine without PostgreSQL cannot pass by testing nothing.
func NewPostgres(t testing.TB, o PGOptions) *Postgres {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	pg, err := StartPostgres(context.Background(), o)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("testenv: stop postgres: %v", err)
		}
	})
	return pg
}

// NewMariaDB starts a MariaDB server for the test and stops it in t.Cleanup. o.Logf defaults to
// t.Logf. Missing binaries fail the test; they never skip it.
func NewMariaDB(t testing.TB, o MariaDBOptions) *MariaDB {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	m, err := StartMariaDB(context.Background(), o)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("testenv: stop mariadb: %v", err)
		}
	})
	return m
}

// NewKafka starts a single-broker kfake cluster for the test and closes it in t.Cleanup.
func NewKafka(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := StartKafka(opts...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
