package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
)

// TestKeysFollowReplicaIdentity: a table keyed by REPLICA IDENTITY USING
// INDEX (not its primary key) is keyed by that index, so deletes, which
// carry only those columns, have a real key.
func TestKeysFollowReplicaIdentity(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.ri (id int PRIMARY KEY, code text NOT NULL, big text);
		CREATE UNIQUE INDEX ri_code ON public.ri (code);
		ALTER TABLE public.ri REPLICA IDENTITY USING INDEX ri_code;
		CREATE TABLE public.tk (id int PRIMARY KEY, n int, big text);`)
	r := e.start(e.config([]string{"public.ri", "public.tk"}, func(c *config.Config) { c.Source.Snapshot = "never" }), daemon.Options{})
	big := `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 500))`
	e.exec("INSERT INTO public.ri VALUES (1, 'a', 'x')")
	e.exec("DELETE FROM public.ri WHERE id = 1")
	e.exec(fmt.Sprintf("INSERT INTO public.tk VALUES (1, 1, %s)", big))
	e.exec("UPDATE public.tk SET id = 2 WHERE id = 1") // key change, big unchanged
	c := e.consume("test.public.ri", "test.public.tk")
	ms := c.poll(7, 30*time.Second, nil)
	for _, m := range ms {
		switch m.Topic {
		case "test.public.ri":
			if fmt.Sprint(m.Key) != "map[code:a]" {
				t.Errorf("ri: key %v, want the replica identity {code: a}", m.Key)
			}
		case "test.public.tk":
			if m.Value != nil && m.Value.Op == "c" && fmt.Sprint(m.Key["id"]) == "2" {
				if got := m.Value.After["big"]; got != change.UnavailableMarker {
					t.Errorf("tk: unchanged TOAST value after a key change = %.30v, want the marker", got)
				}
			}
		}
	}
	r.stop(t)
}

// TestPartitionedTableOneTopic: a partitioned table's snapshot rows and
// streamed changes share the parent's topic.
func TestPartitionedTableOneTopic(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.pt (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE public.pt_a PARTITION OF public.pt FOR VALUES IN ('a');
		CREATE TABLE public.pt_b PARTITION OF public.pt FOR VALUES IN ('b');
		INSERT INTO public.pt VALUES (1, 'a'), (2, 'b');`)
	r := e.start(e.config([]string{"public.pt"}, nil), daemon.Options{})
	e.exec("INSERT INTO public.pt VALUES (3, 'a'), (4, 'b')")
	c := e.consume("test.public.pt", "test.public.pt_a", "test.public.pt_b")
	ms := c.poll(4, 30*time.Second, isEvent)
	c.fetch(time.Second)
	for _, m := range c.all(nil) {
		if m.Topic != "test.public.pt" {
			t.Errorf("event on %s, want test.public.pt: %s", m.Topic, m.Raw)
		}
	}
	if len(ms) != 4 {
		t.Errorf("%d events, want 4", len(ms))
	}
	r.stop(t)
}

// TestRefusesToStreamWhenRowsWouldBeMissed: after a completed snapshot, a
// dropped slot or a newly listed table would silently miss changes or rows;
// Tideline stops with an error saying so.
func TestRefusesToStreamWhenRowsWouldBeMissed(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.a (id int PRIMARY KEY); CREATE TABLE public.b (id int PRIMARY KEY);
		INSERT INTO public.b VALUES (1);`)
	r := e.start(e.config([]string{"public.a"}, nil), daemon.Options{})
	r.stop(t)

	run := func(tables []string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return daemon.Run(ctx, e.config(tables, nil), nopLogger(), daemon.Options{})
	}
	err := run([]string{"public.a", "public.b"})
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), "public.b were added to source.tables after the initial snapshot") {
		t.Errorf("adding a table after the snapshot: %v", err)
	}
	e.exec("SELECT pg_drop_replication_slot('tideline_test')")
	err = run([]string{"public.a"})
	if err == nil || !capture.IsFatal(err) || !strings.Contains(err.Error(), "replication slot tideline_test is gone") {
		t.Errorf("dropped slot: %v", err)
	}
}
