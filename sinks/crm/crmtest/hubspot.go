package crmtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"
)

// HubSpot is a fake of HubSpot's CRM v3 batch API: batch/upsert (by
// idProperty), batch/read (by idProperty) and batch/archive under
// /crm/v3/objects/{objectType}/, with private-app bearer auth, the
// 100-input limit, 207 multi-status partial failures naming the failed
// inputs in context.ids, and a fixed-window rate limit reported in the
// X-HubSpot-RateLimit-* headers (429 past it).
type HubSpot struct {
	*httptest.Server
	recorder

	// Token is the private app token requests must carry.
	Token string
	// Limit, when set, is how many requests each Window allows; past it
	// the answer is 429 (with Retry-After when RetryAfter is set).
	Limit      int
	Window     time.Duration
	RetryAfter string
	// Validate, when set, checks an input's properties: a non-empty
	// message fails that input (VALIDATION_ERROR in a 207).
	Validate func(object string, props map[string]string) string

	windowStart time.Time
	windowUsed  int
	nextID      int
	objects     map[string][]*HubRecord
}

// HubRecord is a record the fake holds.
type HubRecord struct {
	ID         string
	Properties map[string]string
	Archived   bool
}

// NewHubSpot starts a fake HubSpot that takes token; Close it when done.
func NewHubSpot(token string) *HubSpot {
	h := &HubSpot{Token: token, Window: 10 * time.Second, nextID: 1000, objects: map[string][]*HubRecord{}}
	h.Server = httptest.NewServer(h.serve(h.handle))
	return h
}

// Records returns the live (not archived) records of an object type,
// keyed by the idProperty's value as stored, with their properties.
func (h *HubSpot) Records(object, idProperty string) map[string]map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]map[string]string{}
	for _, r := range h.objects[object] {
		if !r.Archived {
			props := map[string]string{}
			for k, v := range r.Properties {
				props[k] = v
			}
			out[r.Properties[idProperty]] = props
		}
	}
	return out
}

// Archived returns the idProperty values of the archived records.
func (h *HubSpot) Archived(object, idProperty string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.objects[object] {
		if r.Archived {
			out = append(out, r.Properties[idProperty])
		}
	}
	return out
}

type hubError struct {
	Status   string              `json:"status"`
	Category string              `json:"category"`
	Message  string              `json:"message"`
	Context  map[string][]string `json:"context,omitempty"`
}

func hubErr(category, msg string, ids ...string) hubError {
	e := hubError{Status: "error", Category: category, Message: msg}
	if len(ids) > 0 {
		e.Context = map[string][]string{"ids": ids}
	}
	return e
}

func (h *HubSpot) handle(req *http.Request, body []byte) (int, http.Header, any) {
	hdr := http.Header{}
	if req.Header.Get("Authorization") != "Bearer "+h.Token {
		return http.StatusUnauthorized, hdr, hubErr("INVALID_AUTHENTICATION", "Authentication credentials not found.")
	}
	if h.Limit > 0 {
		now := time.Now()
		if now.Sub(h.windowStart) >= h.Window {
			h.windowStart, h.windowUsed = now, 0
		}
		h.windowUsed++
		hdr.Set("X-HubSpot-RateLimit-Max", strconv.Itoa(h.Limit))
		hdr.Set("X-HubSpot-RateLimit-Interval-Milliseconds", strconv.Itoa(int(h.Window/time.Millisecond)))
		hdr.Set("X-HubSpot-RateLimit-Remaining", strconv.Itoa(max(h.Limit-h.windowUsed, 0)))
		if h.windowUsed > h.Limit {
			if h.RetryAfter != "" {
				hdr.Set("Retry-After", h.RetryAfter)
			}
			return http.StatusTooManyRequests, hdr, map[string]string{"status": "error", "errorType": "RATE_LIMIT",
				"message": "You have reached your ten_secondly_rolling limit.", "policyName": "TEN_SECONDLY_ROLLING"}
		}
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/crm/v3/objects/")
	object, op, ok2 := strings.Cut(rest, "/batch/")
	if !ok || !ok2 || req.Method != http.MethodPost {
		return http.StatusNotFound, hdr, hubErr("OBJECT_NOT_FOUND", "Unable to infer object type from: "+req.URL.Path)
	}
	switch op {
	case "upsert":
		return h.upsert(hdr, object, body)
	case "read":
		return h.read(hdr, object, body)
	case "archive":
		return h.archive(hdr, object, body)
	}
	return http.StatusNotFound, hdr, hubErr("NOT_FOUND", "no such endpoint")
}

type hubInput struct {
	ID         string            `json:"id"`
	IDProperty string            `json:"idProperty"`
	Properties map[string]string `json:"properties"`
}

func (h *HubSpot) find(object, prop, value string) *HubRecord {
	for _, r := range h.objects[object] {
		if !r.Archived && strings.EqualFold(r.Properties[prop], value) {
			return r
		}
	}
	return nil
}

func result(r *HubRecord, created bool) map[string]any {
	return map[string]any{"id": r.ID, "properties": r.Properties, "new": created, "archived": false,
		"createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
}

func batchDone(results []map[string]any, errs []hubError) (int, any) {
	out := map[string]any{"status": "COMPLETE", "results": results,
		"startedAt": time.Now().UTC().Format(time.RFC3339), "completedAt": time.Now().UTC().Format(time.RFC3339)}
	if len(errs) == 0 {
		return http.StatusOK, out
	}
	out["numErrors"], out["errors"] = len(errs), errs
	return http.StatusMultiStatus, out
}

func (h *HubSpot) upsert(hdr http.Header, object string, body []byte) (int, http.Header, any) {
	var in struct {
		Inputs []hubInput `json:"inputs"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Invalid input JSON: "+err.Error())
	}
	if len(in.Inputs) > 100 {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", fmt.Sprintf("Batch input size must be less than or equal to 100 (got %d).", len(in.Inputs)))
	}
	seen := map[string]bool{}
	for _, x := range in.Inputs {
		if x.IDProperty == "" || x.ID == "" {
			return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "upsert inputs need id and idProperty")
		}
		if k := strings.ToLower(x.ID); seen[k] {
			return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Duplicate IDs found in batch input: ["+x.ID+"]. IDs must be unique", x.ID)
		} else {
			seen[k] = true
		}
	}
	var results []map[string]any
	var errs []hubError
	for _, x := range in.Inputs {
		if h.Validate != nil {
			if msg := h.Validate(object, x.Properties); msg != "" {
				errs = append(errs, hubErr("VALIDATION_ERROR", msg, x.ID))
				continue
			}
		}
		r := h.find(object, x.IDProperty, x.ID)
		created := r == nil
		if created {
			h.nextID++
			r = &HubRecord{ID: strconv.Itoa(h.nextID), Properties: map[string]string{}}
			h.objects[object] = append(h.objects[object], r)
		}
		for k, v := range x.Properties {
			if v == "" {
				delete(r.Properties, k) // "" clears a property
			} else {
				r.Properties[k] = v
			}
		}
		r.Properties[x.IDProperty] = x.ID
		r.Properties["hs_object_id"] = r.ID
		results = append(results, result(r, created))
	}
	status, out := batchDone(results, errs)
	return status, hdr, out
}

func (h *HubSpot) read(hdr http.Header, object string, body []byte) (int, http.Header, any) {
	var in struct {
		IDProperty string     `json:"idProperty"`
		Inputs     []hubInput `json:"inputs"`
		Properties []string   `json:"properties"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Invalid input JSON: "+err.Error())
	}
	if len(in.Inputs) > 100 {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Batch input size must be less than or equal to 100.")
	}
	prop := in.IDProperty
	if prop == "" {
		prop = "hs_object_id"
	}
	var results []map[string]any
	var missing []string
	for _, x := range in.Inputs {
		r := h.find(object, prop, x.ID)
		if r == nil {
			missing = append(missing, x.ID)
			continue
		}
		props := map[string]string{"hs_object_id": r.ID}
		for _, p := range in.Properties {
			if v, ok := r.Properties[p]; ok {
				props[p] = v
			}
		}
		results = append(results, map[string]any{"id": r.ID, "properties": props, "archived": false})
	}
	var errs []hubError
	if len(missing) > 0 {
		errs = append(errs, hubErr("OBJECT_NOT_FOUND", "Could not get some "+strings.ToUpper(object)+" objects, they may be deleted or not exist. Check that ids are valid.", missing...))
	}
	status, out := batchDone(results, errs)
	return status, hdr, out
}

func (h *HubSpot) archive(hdr http.Header, object string, body []byte) (int, http.Header, any) {
	var in struct {
		Inputs []hubInput `json:"inputs"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Invalid input JSON: "+err.Error())
	}
	if len(in.Inputs) > 100 {
		return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Batch input size must be less than or equal to 100.")
	}
	for _, x := range in.Inputs {
		if _, err := strconv.ParseInt(x.ID, 10, 64); err != nil {
			return http.StatusBadRequest, hdr, hubErr("VALIDATION_ERROR", "Invalid object id: "+x.ID, x.ID)
		}
	}
	for _, x := range in.Inputs {
		for _, r := range h.objects[object] {
			if r.ID == x.ID {
				r.Archived = true // archiving twice is no error
			}
		}
	}
	return http.StatusNoContent, hdr, nil
}
