package daemon_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
)

// TestSchemaChangesWhileStreaming alters the table between inserts; each
// event must carry the columns the table had when the row was written,
// without a restart.
func TestSchemaChangesWhileStreaming(t *testing.T) {
	e := newEnv(t)
	e.exec("CREATE TABLE public.s (id int PRIMARY KEY, a int, b text)")
	r := e.start(e.config([]string{"public.s"}, func(c *config.Config) { c.Source.Snapshot = "never" }), daemon.Options{})
	steps := []struct {
		ddl    string
		insert string
		want   string // the after image
	}{
		{"", "INSERT INTO public.s VALUES (1, 10, 'x')", `map[a:10 b:x id:1]`},
		{"ALTER TABLE public.s ADD COLUMN c numeric DEFAULT 1.5", "INSERT INTO public.s VALUES (2, 20, 'y', 2.25)", `map[a:20 b:y c:2.25 id:2]`},
		{"ALTER TABLE public.s DROP COLUMN b", "INSERT INTO public.s VALUES (3, 30, 3.5)", `map[a:30 c:3.5 id:3]`},
		{"ALTER TABLE public.s RENAME COLUMN a TO alpha", "INSERT INTO public.s VALUES (4, 40, 4.5)", `map[alpha:40 c:4.5 id:4]`},
		{"ALTER TABLE public.s ALTER COLUMN alpha TYPE text USING alpha::text || '!'", "INSERT INTO public.s VALUES (5, 'fifty', 5.5)", `map[alpha:fifty c:5.5 id:5]`},
		// Both in one transaction: the row written before the DDL keeps the old shape.
		{"BEGIN; INSERT INTO public.s VALUES (6, 'six', 6.5); ALTER TABLE public.s ADD COLUMN d date; COMMIT", "INSERT INTO public.s VALUES (7, 'seven', 7.5, '1970-01-11')", `map[alpha:seven c:7.5 d:10 id:7]`},
	}
	for _, s := range steps {
		if s.ddl != "" {
			e.exec(s.ddl)
		}
		e.exec(s.insert)
	}
	c := e.consume("test.public.s")
	ms := c.poll(7, 30*time.Second, isEvent)
	got := map[string]string{}
	for _, m := range ms {
		got[fmt.Sprint(m.Key["id"])] = fmt.Sprint(m.Value.After)
	}
	for i, s := range steps {
		id := fmt.Sprint(i + 1)
		if i == 5 {
			id = "7"
		}
		if got[id] != s.want {
			t.Errorf("row %s after %q: after = %s, want %s", id, s.ddl, got[id], s.want)
		}
	}
	if want := `map[alpha:six c:6.5 id:6]`; got["6"] != want {
		t.Errorf("row 6 (written before an ADD COLUMN in the same transaction): %s, want %s", got["6"], want)
	}
	r.stop(t)
}

// TestQuietStreamDeliversLastTransaction commits one transaction and then
// nothing: with no status due for 30 s, the event must be handed over at
// once, not when the next message happens to arrive (here, a keepalive
// after the server's next background WAL record, some 15 s later). The 5 s
// bound is a thousand times the usual delivery time.
func TestQuietStreamDeliversLastTransaction(t *testing.T) {
	e := newEnv(t)
	e.exec("CREATE TABLE public.q (id int PRIMARY KEY)")
	r := e.start(e.config([]string{"public.q"}, func(c *config.Config) {
		c.Source.Snapshot = "never"
		c.Source.StatusInterval = 30 * time.Second
	}), daemon.Options{})
	c := e.consume("test.public.q")
	for i := 1; i <= 3; i++ {
		e.exec(fmt.Sprintf("INSERT INTO public.q VALUES (%d)", i))
		c.poll(i, 5*time.Second, isEvent)
	}
	r.stop(t)
}
