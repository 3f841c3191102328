// Package crmtest holds local HTTP servers that implement the contracts of
// the APIs the CRM sinks write to — HubSpot's CRM v3 batch API,
// Salesforce's sObject Collections with OAuth 2.0, and a webhook receiver —
// closely enough to test the sinks against: batch limits (400 past them),
// per-record failures (207, per-record results), rate limits (429 with
// Retry-After and HubSpot's headers), expired tokens (401) and refreshes,
// and injected faults (5xx, 429, …). Each keeps its records in memory,
// keyed by the external id, for tests to assert on.
package crmtest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Fault is a canned answer that the next matching requests get instead of
// the API's.
type Fault struct {
	// Path, when set, limits the fault to requests whose path contains
	// it.
	Path   string
	Status int
	Header http.Header
	Body   string
	// Times is how many requests get the fault (default 1).
	Times int
}

// Seen is a request a server received, and its answer.
type Seen struct {
	Method, Path, Query string
	Header              http.Header
	Body                []byte
	Status              int
}

// recorder is what every fake shares: faults to inject and the log of
// requests.
type recorder struct {
	mu     sync.Mutex
	faults []*Fault
	seen   []Seen
}

// Inject queues a fault.
func (r *recorder) Inject(f Fault) {
	if f.Times == 0 {
		f.Times = 1
	}
	r.mu.Lock()
	r.faults = append(r.faults, &f)
	r.mu.Unlock()
}

// Requests returns the requests received so far.
func (r *recorder) Requests() []Seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Seen(nil), r.seen...)
}

// Count returns how many requests were answered with status (0: all)
// on paths containing path.
func (r *recorder) Count(path string, status int) int {
	n := 0
	for _, s := range r.Requests() {
		if strings.Contains(s.Path, path) && (status == 0 || s.Status == status) {
			n++
		}
	}
	return n
}

// serve wraps an API handler: it reads the body, answers with a queued
// fault if one matches, and logs the request. h returns the status, the
// headers to add and the body to write. r.mu is held while h runs: the
// fakes answer one request at a time, as a store with row locks would
// appear to a single client.
func (r *recorder) serve(h func(req *http.Request, body []byte) (int, http.Header, any)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		seen := Seen{Method: req.Method, Path: req.URL.Path, Query: req.URL.RawQuery, Header: req.Header.Clone(), Body: body}
		for i, f := range r.faults {
			if f.Path != "" && !strings.Contains(req.URL.Path, f.Path) {
				continue
			}
			if f.Times--; f.Times <= 0 {
				r.faults = append(r.faults[:i], r.faults[i+1:]...)
			}
			for k, v := range f.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(f.Status)
			io.WriteString(w, f.Body)
			seen.Status = f.Status
			r.seen = append(r.seen, seen)
			return
		}
		status, hdr, out := h(req, body)
		for k, v := range hdr {
			w.Header()[k] = v
		}
		seen.Status = status
		r.seen = append(r.seen, seen)
		if out == nil {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(out)
	})
}
