package webhook_test

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
	"github.com/tideline-cdc/tideline/sinks/crm/webhook"
)

const secret = "s3cret"

// fast are client settings that keep retries short in tests.
var fast = crm.ClientConfig{Retries: 3, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Timeout: 2 * time.Second}

func newSink(t *testing.T, url string, batch int) *webhook.Sink {
	t.Helper()
	s, err := webhook.New(webhook.Config{Name: "hook", URL: url, Secret: secret, BatchSize: batch, Client: fast,
		Headers: map[string]string{"X-Source": "tideline"},
		Mapping: crm.MappingConfig{Object: "contacts", IDProperty: "email", OnDelete: crm.Delete,
			Fields: map[string]string{"email": "lower(trim(email))", "firstname": "name", "phone": `e164(phone, "FR")`},
			Where:  "email != nil"}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func rows(n int) *apply.TableBatch {
	t := crmtest.Customers()
	var rs []apply.Row
	for i := range n {
		rs = append(rs, crmtest.Row(t, change.OpCreate, i+1, map[string]any{"id": i, "email": fmt.Sprintf(" User%d@Example.com", i), "name": fmt.Sprint("user ", i), "phone": "0612345678"}))
	}
	return crmtest.Batch(t, rs...)
}

func TestDeliversSignedBatches(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	s := newSink(t, w.URL, 2)
	tb := rows(5)
	tb.Rows = append(tb.Rows, crmtest.Row(tb.Table, change.OpCreate, 9, map[string]any{"id": 99, "email": nil})) // filtered out
	if err := s.Apply(context.Background(), tb); err != nil {
		t.Fatal(err)
	}
	got := w.Records()
	if len(got) != 5 {
		t.Fatalf("receiver holds %d records: %v", len(got), got)
	}
	if r := got["user3@example.com"]; r["firstname"] != "user 3" || r["phone"] != "+33612345678" {
		t.Errorf("record %v", r)
	}
	if n := w.Count("", http.StatusOK); n != 3 {
		t.Errorf("%d requests for 5 records in batches of 2", n)
	}
	for _, r := range w.Requests() {
		if r.Header.Get("X-Source") != "tideline" || !strings.HasPrefix(r.Header.Get(webhook.SignatureHeader), "sha256=") {
			t.Errorf("headers %v", r.Header)
		}
	}
	// A delete carries only the key: the id comes from what the sink sent.
	del := crmtest.Batch(tb.Table, crmtest.Row(tb.Table, change.OpDelete, 10, map[string]any{"id": 3}))
	if err := s.Apply(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	if w.Removed()["user3@example.com"] != "delete" || len(w.Records()) != 4 {
		t.Errorf("removed %v", w.Removed())
	}
}

func TestIdempotencyKeyIsStableAcrossRetries(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	s := newSink(t, w.URL, 10)
	w.Inject(crmtest.Fault{Status: http.StatusServiceUnavailable, Times: 2})
	w.Inject(crmtest.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"0.05"}}})
	if err := s.Apply(context.Background(), rows(3)); err != nil {
		t.Fatal(err)
	}
	reqs := w.Requests()
	if len(reqs) != 4 {
		t.Fatalf("%d requests, want 4 (2×503, 429, 200)", len(reqs))
	}
	key := reqs[0].Header.Get(webhook.IdempotencyHeader)
	for _, r := range reqs {
		if r.Header.Get(webhook.IdempotencyHeader) != key {
			t.Errorf("a retry changed the idempotency key: %q vs %q", r.Header.Get(webhook.IdempotencyHeader), key)
		}
	}
	// A replay of the batch (a crash before the offsets were committed)
	// sends the same key: the receiver does not apply it twice.
	s2 := newSink(t, w.URL, 10)
	if err := s2.Apply(context.Background(), rows(3)); err != nil {
		t.Fatal(err)
	}
	if w.Duplicates() != 1 || len(w.Applied()) != 1 {
		t.Errorf("duplicates %d, applied %d", w.Duplicates(), len(w.Applied()))
	}
	// Other records, another key.
	if err := s2.Apply(context.Background(), rows(4)); err != nil {
		t.Fatal(err)
	}
	if len(w.Applied()) != 2 {
		t.Errorf("a different batch was taken for a duplicate")
	}
}

func TestDownReceiverIsTransient(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	s := newSink(t, w.URL, 10)
	w.Inject(crmtest.Fault{Status: http.StatusBadGateway, Times: 100})
	err := s.Apply(context.Background(), rows(2))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "502") {
		t.Fatalf("err = %v, want a transient error", err)
	}
	if n := w.Count("", http.StatusBadGateway); n != 4 {
		t.Errorf("%d attempts, want 1 + 3 retries", n)
	}
}

func TestRejectedBatchGoesToDLQ(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	w.Reject = func(p webhook.Payload) int {
		for _, r := range p.Records {
			if strings.Contains(r.ID, "user1@") {
				return http.StatusUnprocessableEntity
			}
		}
		return 0
	}
	s := newSink(t, w.URL, 2)
	rejected, err := crmtest.Drive(context.Background(), s, rows(5), 3)
	if err != nil {
		t.Fatal(err)
	}
	// Rows 0 and 1 share the rejected request.
	if len(rejected) != 2 || !strings.Contains(fmt.Sprint(rejected[`{"id":1}`]), "HTTP 422") {
		t.Errorf("rejected %v", rejected)
	}
	if len(w.Records()) != 3 {
		t.Errorf("receiver holds %v", w.Records())
	}
	// The rejected request was sent once: the runtime's retries of the
	// rest were answered from what the sink had learned.
	if n := w.Count("", 0); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestWrongSecretStopsTheSink(t *testing.T) {
	w := crmtest.NewWebhook("another secret")
	defer w.Close()
	s := newSink(t, w.URL, 10)
	err := s.Apply(context.Background(), rows(1))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "401") {
		t.Errorf("err = %v, want a transient error that names the 401", err)
	}
}

func TestInvalidPhoneGoesToDLQ(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	s := newSink(t, w.URL, 10)
	tb := rows(3)
	tb.Rows[1] = crmtest.Row(tb.Table, change.OpCreate, 2, map[string]any{"id": 1, "email": "x@y.z", "phone": "12"})
	rejected, err := crmtest.Drive(context.Background(), s, tb, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || !strings.Contains(fmt.Sprint(rejected[`{"id":1}`]), "fields.phone") {
		t.Errorf("rejected %v", rejected)
	}
	if len(w.Records()) != 2 || w.Count("", 0) != 1 {
		t.Errorf("records %v after %d requests", w.Records(), w.Count("", 0))
	}
}

func TestPreviewSendsNothing(t *testing.T) {
	w := crmtest.NewWebhook(secret)
	defer w.Close()
	s := newSink(t, w.URL, 2)
	reqs, err := s.Preview(rows(3))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 2 || reqs[0].Method != http.MethodPost || reqs[0].URL != w.URL || !strings.Contains(string(reqs[0].Body), `"user0@example.com"`) {
		t.Errorf("preview %+v", reqs)
	}
	if !webhook.Verify([]byte(secret), reqs[0].Body, reqs[0].Header.Get(webhook.SignatureHeader)) {
		t.Error("preview's signature does not verify")
	}
	if w.Count("", 0) != 0 {
		t.Error("preview sent requests")
	}
	// Apply sends exactly what Preview showed.
	if err := s.Apply(context.Background(), rows(3)); err != nil {
		t.Fatal(err)
	}
	for i, r := range w.Requests() {
		if string(r.Body) != string(reqs[i].Body) || r.Header.Get(webhook.IdempotencyHeader) != reqs[i].Header.Get(webhook.IdempotencyHeader) {
			t.Errorf("request %d differs from its preview", i)
		}
	}
}

func TestValidate(t *testing.T) {
	ps := webhook.Config{URL: "ftp://x", BatchSize: -1}.Validate()
	want := []string{"url", "batch_size", "object", "id_property", "fields"}
	for _, k := range want {
		found := false
		for _, p := range ps {
			found = found || p.Key == k
		}
		if !found {
			t.Errorf("no problem for %s in %v", k, ps)
		}
	}
}
