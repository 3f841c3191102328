package hubspot_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/sinks/crm"
	"github.com/tideline-cdc/tideline/sinks/crm/crmtest"
	"github.com/tideline-cdc/tideline/sinks/crm/hubspot"
)

const token = "pat-na1-test"

var fast = crm.ClientConfig{RatePerSecond: 1000, Retries: 3, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Timeout: 2 * time.Second}

// The example mapping.
var contacts = crm.MappingConfig{Object: "contacts", IDProperty: "email", OnDelete: crm.Archive,
	Fields: map[string]string{"email": "lower(trim(email))", "firstname": "name", "phone": `e164(phone, "FR")`},
	Where:  "email != nil"}

func newSink(t *testing.T, url string, m crm.MappingConfig, cc crm.ClientConfig) *hubspot.Sink {
	t.Helper()
	s, err := hubspot.New(hubspot.Config{Name: "crm", URL: url, Token: token, Mapping: m, Client: cc}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func customers(from, n int) *apply.TableBatch {
	t := crmtest.Customers()
	var rs []apply.Row
	for i := from; i < from+n; i++ {
		rs = append(rs, crmtest.Row(t, change.OpUpdate, i+1, map[string]any{"id": i, "email": fmt.Sprintf("  Person%d@Example.COM", i), "name": fmt.Sprint("P", i), "phone": "06 12 34 56 78"}))
	}
	return crmtest.Batch(t, rs...)
}

func TestUpsertsInBatchesOf100(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	s := newSink(t, h.URL, contacts, fast)
	if err := s.Apply(context.Background(), customers(0, 250)); err != nil {
		t.Fatal(err)
	}
	got := h.Records("contacts", "email")
	if len(got) != 250 {
		t.Fatalf("HubSpot holds %d contacts", len(got))
	}
	if c := got["person42@example.com"]; c["firstname"] != "P42" || c["phone"] != "+33612345678" {
		t.Errorf("contact %v", c)
	}
	if n := h.Count("/batch/upsert", http.StatusOK); n != 3 {
		t.Errorf("%d upsert calls for 250 rows", n)
	}
	// Replaying the batch changes nothing.
	if err := newSink(t, h.URL, contacts, fast).Apply(context.Background(), customers(0, 250)); err != nil {
		t.Fatal(err)
	}
	if len(h.Records("contacts", "email")) != 250 {
		t.Error("a replay created records")
	}
}

func TestPartialFailuresGoToDLQ(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	h.Validate = func(_ string, p map[string]string) string {
		if strings.HasPrefix(p["firstname"], "P1") {
			return `Property values were not valid: [{"isValid":false,"message":"firstname P1x is blocked","name":"firstname"}]`
		}
		return ""
	}
	s := newSink(t, h.URL, contacts, fast)
	rejected, err := crmtest.Drive(context.Background(), s, customers(0, 30), 3)
	if err != nil {
		t.Fatal(err)
	}
	// P1, P10..P19 are rejected.
	if len(rejected) != 11 {
		t.Errorf("%d rejected: %v", len(rejected), rejected)
	}
	if e := rejected[`{"id":12}`]; e == nil || !strings.Contains(e.Error(), "VALIDATION_ERROR") || !strings.Contains(e.Error(), "P1x is blocked") {
		t.Errorf("row 12: %v", e)
	}
	if n := len(h.Records("contacts", "email")); n != 19 {
		t.Errorf("HubSpot holds %d contacts, want 19", n)
	}
	// One call: the runtime's retries after each rejected row are answered
	// from the 207, not sent again.
	if n := h.Count("/batch/upsert", 0); n != 1 {
		t.Errorf("%d upsert calls", n)
	}
}

func TestRetryAfterAndServerErrors(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	h.Inject(crmtest.Fault{Path: "/batch/upsert", Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"0.05"}},
		Body: `{"status":"error","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}`})
	h.Inject(crmtest.Fault{Path: "/batch/upsert", Status: http.StatusBadGateway})
	// The backoff is long: only Retry-After can make the first retry quick.
	cc := fast
	cc.MinBackoff, cc.MaxBackoff = 50*time.Millisecond, 50*time.Millisecond
	s := newSink(t, h.URL, contacts, cc)
	if err := s.Apply(context.Background(), customers(0, 3)); err != nil {
		t.Fatal(err)
	}
	if len(h.Records("contacts", "email")) != 3 || h.Count("/batch/upsert", 0) != 3 {
		t.Errorf("%d records after %d calls", len(h.Records("contacts", "email")), h.Count("/batch/upsert", 0))
	}
	// A long outage: Apply returns a transient error, and the runtime's
	// next attempt applies the batch once.
	h.Inject(crmtest.Fault{Status: http.StatusServiceUnavailable, Times: 4})
	rejected, err := crmtest.Drive(context.Background(), s, customers(3, 3), 5)
	if err != nil || len(rejected) > 0 {
		t.Fatalf("rejected %v, err %v", rejected, err)
	}
	if len(h.Records("contacts", "email")) != 6 {
		t.Error("the batch was not applied after the outage")
	}
}

func TestRateLimitHeadersAreHonoured(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	h.Limit, h.Window = 3, 100*time.Millisecond
	m := contacts
	s, err := hubspot.New(hubspot.Config{Name: "crm", URL: h.URL, Token: token, Mapping: m, BatchSize: 1, Client: fast}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(context.Background(), customers(0, 8)); err != nil {
		t.Fatal(err)
	}
	if n := h.Count("", http.StatusTooManyRequests); n != 0 {
		t.Errorf("%d calls got 429: the sink did not hold when the window was spent", n)
	}
	if len(h.Records("contacts", "email")) != 8 {
		t.Error("records missing")
	}
}

func TestArchive(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	s := newSink(t, h.URL, contacts, fast)
	if err := s.Apply(context.Background(), customers(0, 5)); err != nil {
		t.Fatal(err)
	}
	tbl := crmtest.Customers()
	del := crmtest.Batch(tbl,
		crmtest.Row(tbl, change.OpDelete, 10, map[string]any{"id": 1}),
		crmtest.Row(tbl, change.OpDelete, 11, map[string]any{"id": 3}))
	if err := s.Apply(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	got := h.Records("contacts", "email")
	if len(got) != 3 || got["person1@example.com"] != nil || len(h.Archived("contacts", "email")) != 2 {
		t.Errorf("live %v, archived %v", got, h.Archived("contacts", "email"))
	}
	// Archiving again (a replay) is harmless: the lookup finds nothing.
	if err := s.Apply(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	// A restarted sink does not know which email key 2 had: the delete
	// goes to the dead-letter topic, saying why.
	s2 := newSink(t, h.URL, contacts, fast)
	rejected, err := crmtest.Drive(context.Background(), s2, crmtest.Batch(tbl, crmtest.Row(tbl, change.OpDelete, 12, map[string]any{"id": 2})), 3)
	if err != nil || !strings.Contains(fmt.Sprint(rejected[`{"id":2}`]), "carries only the key columns") {
		t.Errorf("rejected %v, err %v", rejected, err)
	}
	// A mapping whose id is the source key archives after a restart too.
	byKey := crm.MappingConfig{Object: "contacts", IDProperty: "customer_id", Fields: map[string]string{"customer_id": "concat(id)", "email": "lower(trim(email))"}}
	s3 := newSink(t, h.URL, byKey, fast)
	if err := s3.Apply(context.Background(), customers(20, 2)); err != nil {
		t.Fatal(err)
	}
	s4 := newSink(t, h.URL, byKey, fast)
	if err := s4.Apply(context.Background(), crmtest.Batch(tbl, crmtest.Row(tbl, change.OpDelete, 30, map[string]any{"id": 21}))); err != nil {
		t.Fatal(err)
	}
	if got := h.Records("contacts", "customer_id"); got["21"] != nil || got["20"] == nil {
		t.Errorf("by key: %v", got)
	}
}

func TestSettingsErrorsStopTheSink(t *testing.T) {
	h := crmtest.NewHubSpot("another token")
	defer h.Close()
	s := newSink(t, h.URL, contacts, fast)
	err := s.Apply(context.Background(), customers(0, 2))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "401") {
		t.Errorf("err = %v, want a transient error naming the 401", err)
	}
}

func TestUnnamedErrorsSplitTheBatch(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	// A 400 that names no input: the runtime must split to find the row.
	h.Inject(crmtest.Fault{Path: "/batch/upsert", Status: http.StatusBadRequest, Body: `{"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid"}`})
	s := newSink(t, h.URL, contacts, fast)
	err := s.Apply(context.Background(), customers(0, 4))
	if !apply.IsPermanent(err) {
		t.Fatalf("err = %v, want permanent", err)
	}
	rejected, err := crmtest.Drive(context.Background(), s, customers(0, 4), 3)
	if err != nil || len(rejected) != 0 || len(h.Records("contacts", "email")) != 4 {
		t.Errorf("rejected %v err %v records %d", rejected, err, len(h.Records("contacts", "email")))
	}
}

func TestPreview(t *testing.T) {
	h := crmtest.NewHubSpot(token)
	defer h.Close()
	s := newSink(t, h.URL, contacts, fast)
	tb := customers(0, 150)
	tb.Rows = append(tb.Rows, crmtest.Row(tb.Table, change.OpDelete, 999, map[string]any{"id": 5}))
	reqs, err := s.Preview(tb)
	if err != nil {
		t.Fatal(err)
	}
	// Two upserts; the delete's id is not known to a fresh engine, so
	// no lookup.
	if len(reqs) != 2 || reqs[0].URL != h.URL+"/crm/v3/objects/contacts/batch/upsert" || reqs[0].Header.Get("Authorization") != "" {
		t.Fatalf("preview %+v", reqs)
	}
	if !strings.Contains(string(reqs[0].Body), `{"id":"person0@example.com","idProperty":"email","properties":{"email":"person0@example.com","firstname":"P0","phone":"+33612345678"}}`) {
		t.Errorf("body %s", reqs[0].Body)
	}
	if h.Count("", 0) != 0 {
		t.Error("preview sent requests")
	}
	// Rows given as maps (what tideline preview reads from the source).
	rows, err := crm.Rows(crmtest.Customers(), []map[string]any{{"id": 1, "email": "A@B.io", "name": "A", "phone": "+33 6 12 34 56 78"}})
	if err != nil {
		t.Fatal(err)
	}
	reqs, err = s.Preview(crmtest.Batch(crmtest.Customers(), rows...))
	if err != nil || len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"email":"a@b.io"`) {
		t.Errorf("preview of maps: %v %+v", err, reqs)
	}
}

func TestValidate(t *testing.T) {
	ps := hubspot.Config{BatchSize: 101, Mapping: contacts}.Validate()
	if len(ps) != 2 || ps[0].Key != "token" || ps[1].Key != "batch_size" {
		t.Errorf("problems %v", ps)
	}
	if ps := (hubspot.Config{Token: "x", Mapping: contacts}).Validate(); len(ps) != 0 {
		t.Errorf("the issue's example: %v", ps)
	}
}
