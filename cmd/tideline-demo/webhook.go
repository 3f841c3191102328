package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tideline-cdc/tideline/sinks/crm/webhook"
)

// receiver is the demo's webhook endpoint: it checks each batch's
// signature and prints a line per batch and per record.
type receiver struct {
	URL     string
	secret  string
	srv     *http.Server
	out     io.Writer
	mu      sync.Mutex
	batches atomic.Int64
	records atomic.Int64
}

// startReceiver listens on a free loopback port.
func startReceiver(out io.Writer) (*receiver, error) {
	if out == nil {
		out = os.Stdout
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook receiver: %w", err)
	}
	r := &receiver{URL: "http://" + ln.Addr().String() + "/hook", secret: "demo-webhook-secret", out: out}
	r.srv = &http.Server{Handler: r}
	go r.srv.Serve(ln) //nolint:errcheck // ends with Close
	return r, nil
}

func (r *receiver) Close() error { return r.srv.Close() }

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.Header.Get(webhook.SignatureHeader) != webhook.Sign([]byte(r.secret), body) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var batch struct {
		Table   string `json:"table"`
		Object  string `json:"object"`
		Records []struct {
			Op         string         `json:"op"`
			ID         string         `json:"id"`
			Properties map[string]any `json:"properties"`
		} `json:"records"`
	}
	if err := json.Unmarshal(body, &batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.batches.Add(1)
	r.records.Add(int64(len(batch.Records)))
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.out, "webhook <- %d %s from %s (signature ok, Idempotency-Key %s)\n", len(batch.Records), batch.Object, batch.Table, req.Header.Get(webhook.IdempotencyHeader))
	for i, rec := range batch.Records {
		if i == 3 {
			fmt.Fprintf(r.out, "           … %d more\n", len(batch.Records)-3)
			break
		}
		props, _ := json.Marshal(rec.Properties)
		fmt.Fprintf(r.out, "           %s %s %s\n", rec.Op, rec.ID, strings.TrimSpace(string(props)))
	}
	w.WriteHeader(http.StatusNoContent)
}
