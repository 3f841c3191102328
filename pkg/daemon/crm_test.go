package daemon_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tideline-cdc/tideline/sinks/crm/crmtest"
)

// customerEmail is customer n's address as the source holds it: mixed
// case, with spaces around, so only the mapping's lower(trim(…)) makes
// two spellings one HubSpot contact.
func customerEmail(n int, r *rand.Rand) string {
	e := fmt.Sprintf("Customer.%d@Example.COM", n)
	if r.IntN(2) == 0 {
		e = strings.ToUpper(e)
	}
	return "  " + e + " "
}

// TestCRMKillNineLoop streams public.customers into a HubSpot (a local
// server implementing its batch API: 100-input limit, 207 partial
// failures, a rate limit answered with 429 and Retry-After) while killing
// tideline with SIGKILL. The mapping lower-cases and trims the e-mail (the
// id property), normalises the phone to E.164 and skips rows without an
// e-mail; deletes archive. Afterwards HubSpot holds exactly the mapped
// source rows, and the rows HubSpot rejects went to the dead-letter topic.
func TestCRMKillNineLoop(t *testing.T) {
	e := newEnv(t)
	hub := crmtest.NewHubSpot("hs-test-token")
	defer hub.Close()
	hub.Limit, hub.Window, hub.RetryAfter = 40, time.Second, "1"
	hub.Validate = func(object string, props map[string]string) string {
		if props["firstname"] == "poison" {
			return "Property values were not valid: firstname"
		}
		return ""
	}
	e.exec(`CREATE TABLE public.customers (id bigint PRIMARY KEY, email text, name text NOT NULL, phone text)`)
	// Deletes carry the whole row, so the e-mail of a deleted customer is
	// known after a restart too.
	e.exec(`ALTER TABLE public.customers REPLICA IDENTITY FULL`)
	seed := rand.New(rand.NewPCG(1, 2))
	for n := 1; n <= 150; n++ {
		name, email := fmt.Sprintf("n%d", n), customerEmail(n, seed)
		if n == 7 || n == 13 {
			name = "poison" // HubSpot rejects these in a 207
		}
		if n%25 == 0 {
			e.exec(`INSERT INTO public.customers VALUES ($1, NULL, $2, NULL)`, n, name) // no e-mail: filtered out
			continue
		}
		e.exec(`INSERT INTO public.customers VALUES ($1, $2, $3, $4)`, n, email, name, fmt.Sprintf("06 12 34 %02d %02d", n/100, n%100))
	}
	port, _ := freePort(t)
	cfg := e.writeConfig([]string{"public.customers"}, httpConfig(port)+fmt.Sprintf(`sinks:
  - name: crm
    type: hubspot
    url: %s
    token: ${TL_TEST_HUBSPOT_TOKEN}
    tables: [public.customers]
    object: contacts
    id_property: email
    fields:
      email: lower(trim(email))
      firstname: name
      phone: e164(phone, "FR")
    where: email != nil
    on_delete: archive
    rate_per_second: 30
    batch_records: 300
    linger: 100ms
`, hub.URL))
	t.Setenv("TL_TEST_HUBSPOT_TOKEN", "hs-test-token")

	// tideline validate reads the table's columns and compiles the mapping.
	if out, err := exec.Command(tidelineBin(t), "validate", "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var writes atomic.Int64
	done := make(chan struct{})
	conn, err := pgx.Connect(context.Background(), e.pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		defer conn.Close(context.Background())
		r := rand.New(rand.NewPCG(3, 4))
		for ctx.Err() == nil {
			n := r.IntN(180) + 1
			if n == 7 || n == 13 || n%25 == 0 {
				continue
			}
			var err error
			switch op := r.IntN(10); {
			case op < 3:
				_, err = conn.Exec(context.Background(), `INSERT INTO public.customers VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
					n, customerEmail(n, r), fmt.Sprintf("n%d", n), fmt.Sprintf("06 12 34 %02d %02d", n/100, n%100))
			case op < 8: // a new name, and the e-mail in another spelling
				_, err = conn.Exec(context.Background(), `UPDATE public.customers SET name = $2, email = $3 WHERE id = $1`,
					n, fmt.Sprintf("u%d-%d", n, r.IntN(1000)), customerEmail(n, r))
			default:
				_, err = conn.Exec(context.Background(), `DELETE FROM public.customers WHERE id = $1`, n)
			}
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			writes.Add(1)
			time.Sleep(3 * time.Millisecond)
		}
	}()
	p := startProc(t, cfg, port)
	for i := 0; i < 4; i++ {
		p.waitReady(60 * time.Second)
		time.Sleep(time.Duration(800+rand.IntN(2000)) * time.Millisecond)
		p.kill9()
		p = startProc(t, cfg, port)
	}
	p.waitReady(60 * time.Second)
	time.Sleep(500 * time.Millisecond)
	cancel()
	<-done
	t.Logf("writer made %d changes across 4 kills", writes.Load())

	// The mapped source rows: what HubSpot must hold.
	want := map[string]map[string]string{}
	rows, err := e.conn().Query(context.Background(), `SELECT id, email, name, phone FROM public.customers WHERE email IS NOT NULL AND name <> 'poison'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		var email, name, phone string
		if err := rows.Scan(&id, &email, &name, &phone); err != nil {
			t.Fatal(err)
		}
		key := strings.ToLower(strings.TrimSpace(email))
		want[key] = map[string]string{"email": key, "firstname": name, "phone": fmt.Sprintf("+3361234%02d%02d", id/100, id%100)}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var diff string
	deadline := time.Now().Add(90 * time.Second)
	for {
		diff = diffRecords(want, hub.Records("contacts", "email"))
		if diff == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if diff != "" {
		l := p.log()
		t.Errorf("HubSpot differs from the mapped source rows (- source only, + HubSpot only):\n%s\ntideline's log (end):\n%s", diff, l[max(0, len(l)-4000):])
	} else {
		t.Logf("HubSpot holds the %d mapped source rows, %d archived", len(want), len(hub.Archived("contacts", "email")))
	}
	// The dead-letter topic holds the rows HubSpot rejected (again after
	// a replay, perhaps), and nothing else.
	dlq := e.consume("test.dlq.crm")
	ids := map[string]bool{}
	deadline = time.Now().Add(30 * time.Second)
	for len(ids) < 2 && time.Now().Before(deadline) {
		dlq.fetch(time.Second)
		for _, m := range dlq.all(nil) {
			ids[fmt.Sprint(m.Key["id"])] = true
		}
	}
	if len(ids) != 2 || !ids["7"] || !ids["13"] {
		t.Errorf("dead-lettered customers %v, want 7 and 13 (the rows HubSpot rejects)", ids)
	}
	p.term(60 * time.Second)
}

// diffRecords lists the records that differ, as sorted lines.
func diffRecords(want, got map[string]map[string]string) string {
	line := func(k string, m map[string]string) string {
		if m == nil {
			return k + " (none)"
		}
		return fmt.Sprintf("%s firstname=%s phone=%s email=%s", k, m["firstname"], m["phone"], m["email"])
	}
	var d []string
	for k, w := range want {
		if g := got[k]; g == nil || g["firstname"] != w["firstname"] || g["phone"] != w["phone"] || g["email"] != w["email"] {
			d = append(d, "- "+line(k, w), "+ "+line(k, g))
		}
	}
	for k, g := range got {
		if want[k] == nil {
			d = append(d, "+ "+line(k, g))
		}
	}
	sort.Strings(d)
	if len(d) > 12 {
		d = append(d[:12], fmt.Sprintf("… %d more", len(d)-12))
	}
	return strings.Join(d, "\n")
}

// TestCRMValidateAndPreview: tideline validate compiles a CRM mapping
// against the source table's columns (an unknown column and a transform
// on the wrong type are problems with their keys), and tideline preview
// prints the requests the sink would send for current rows, sending none.
func TestCRMValidateAndPreview(t *testing.T) {
	e := newEnv(t)
	hub := crmtest.NewHubSpot("tok")
	defer hub.Close()
	e.exec(`CREATE TABLE public.customers (id bigint PRIMARY KEY, email text, name text, score float8)`)
	e.exec(`INSERT INTO public.customers VALUES (1, ' Ann@Example.COM', 'Ann', 1.5), (2, NULL, 'Nobody', 0), (3, 'bob@example.com', 'Bob', 2)`)
	sink := func(fields string) string {
		return fmt.Sprintf("sinks:\n  - name: crm\n    type: hubspot\n    url: %s\n    token: tok\n    object: contacts\n    id_property: email\n"+
			"    fields:\n%s    where: email != nil\n", hub.URL, fields)
	}
	bad := e.writeConfig([]string{"public.customers"}, sink("      email: lower(trim(email))\n      firstname: first_name\n      phone: e164(score, \"FR\")\n"))
	out, err := exec.Command(tidelineBin(t), "validate", "--config", bad).CombinedOutput()
	if err == nil {
		t.Fatalf("validate accepted a mapping with an unknown column:\n%s", out)
	}
	for _, want := range []string{`sinks[0].fields.firstname: public.customers: `, `unknown column "first_name"`, `sinks[0].fields.phone: public.customers: `} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
	if out, err := exec.Command(tidelineBin(t), "validate", "--offline", "--config", bad).CombinedOutput(); err != nil {
		t.Errorf("validate --offline checks only the syntax, and the syntax is fine: %v\n%s", err, out)
	}

	good := e.writeConfig([]string{"public.customers"}, sink("      email: lower(trim(email))\n      firstname: upper(name)\n"))
	out, err = exec.Command(tidelineBin(t), "preview", "--config", good, "--sink", "crm", "--limit", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("preview: %v\n%s", err, out)
	}
	for _, want := range []string{"# public.customers: 3 rows -> 1 requests", "POST " + hub.URL + "/crm/v3/objects/contacts/batch/upsert",
		`"idProperty": "email"`, `"email": "ann@example.com"`, `"firstname": "ANN"`, `"firstname": "BOB"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("preview output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "Nobody") || strings.Contains(string(out), "tok") {
		t.Errorf("preview shows the filtered row or the token:\n%s", out)
	}
	if n := len(hub.Requests()); n != 0 {
		t.Errorf("preview sent %d requests to HubSpot, want none", n)
	}
}
