package crmtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"

	"github.com/tideline-cdc/tideline/sinks/crm/webhook"
)

// Webhook is a receiver of the webhook sink's POSTs, written as a careful
// receiver would be: it checks the signature (401 when it does not
// match), applies a request once per idempotency key (a request seen
// again is answered 200 and not applied again), and keeps the records by
// id.
type Webhook struct {
	*httptest.Server
	recorder

	Secret string
	// Reject, when set, refuses a payload with the status it returns (0:
	// accept), e.g. 422 for a record the receiver cannot take.
	Reject func(p webhook.Payload) int

	records    map[string]map[string]any
	removed    map[string]string // id -> op (archive or delete)
	keys       map[string]int
	duplicates int
	applied    []webhook.Payload
}

// NewWebhook starts a receiver that checks signatures with secret.
func NewWebhook(secret string) *Webhook {
	w := &Webhook{Secret: secret, records: map[string]map[string]any{}, removed: map[string]string{}, keys: map[string]int{}}
	w.Server = httptest.NewServer(w.serve(w.handle))
	return w
}

// Records returns the records upserted and not removed, by id.
func (w *Webhook) Records() map[string]map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]map[string]any{}
	for k, v := range w.records {
		out[k] = v
	}
	return out
}

// Removed returns the ids archived or deleted, with the op.
func (w *Webhook) Removed() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for k, v := range w.removed {
		out[k] = v
	}
	return out
}

// Duplicates is how many requests came again with an idempotency key
// already applied.
func (w *Webhook) Duplicates() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.duplicates
}

// Applied returns the payloads applied, in order.
func (w *Webhook) Applied() []webhook.Payload {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]webhook.Payload(nil), w.applied...)
}

func (w *Webhook) handle(req *http.Request, body []byte) (int, http.Header, any) {
	if req.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, nil, map[string]string{"error": "POST only"}
	}
	if !webhook.Verify([]byte(w.Secret), body, req.Header.Get(webhook.SignatureHeader)) {
		return http.StatusUnauthorized, nil, map[string]string{"error": "bad signature"}
	}
	key := req.Header.Get(webhook.IdempotencyHeader)
	if key == "" {
		return http.StatusBadRequest, nil, map[string]string{"error": "no idempotency key"}
	}
	if w.keys[key] > 0 {
		w.keys[key]++
		w.duplicates++
		return http.StatusOK, nil, map[string]string{"status": "duplicate"}
	}
	var p webhook.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		return http.StatusBadRequest, nil, map[string]string{"error": err.Error()}
	}
	if w.Reject != nil {
		if status := w.Reject(p); status != 0 {
			return status, nil, map[string]string{"error": "rejected by the receiver"}
		}
	}
	w.keys[key] = 1
	for _, r := range p.Records {
		switch r.Op {
		case "upsert":
			delete(w.removed, r.ID)
			w.records[r.ID] = r.Properties
		default:
			delete(w.records, r.ID)
			w.removed[r.ID] = r.Op
		}
	}
	w.applied = append(w.applied, p)
	return http.StatusOK, nil, map[string]string{"status": "ok"}
}
