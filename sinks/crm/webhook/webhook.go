// Package webhook is the webhook sink (type: webhook): mapped records are
// POSTed as JSON batches to a URL,
//
//	{"sink": "crm", "table": "public.customers", "object": "contacts", "id_property": "email",
//	 "records": [{"op": "upsert", "id": "ann@example.com", "position": "…", "properties": {…}},
//	             {"op": "archive", "id": "bob@example.com", "position": "…"}]}
//
// with, on every request:
//
//	X-Tideline-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>
//	Idempotency-Key: <hex>  (the same for a retry of the same records)
//
// A record's op is upsert, or the sink's on_delete (archive or delete);
// position is the change's source position (hex), which increases per key:
// a receiver can drop a change older than one it applied. The idempotency
// key is a hash of the topic and of each record's source key and position,
// so a request sent again — by the client's retries, or the runtime's
// retry of the batch after a crash — carries the key it had.
//
// A 2xx response applies the request's records. 408, 429 (Retry-After
// honoured) and 5xx responses and network errors are retried with
// backoff, then the batch is retried by the runtime without limit. 401,
// 403, 404 and 407 mean the sink's settings are wrong (secret, URL): they
// are retried the same way, so the sink stops with the error until they
// are fixed, rather than sending the whole stream to the dead-letter
// topic. Any other 4xx rejects the request's records: they go to the
// dead-letter topic with the receiver's answer.
package webhook

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"

	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/sinks/crm"
)

// DefaultBatch is the default batch_size.
const DefaultBatch = 100

// The headers every request carries.
const (
	SignatureHeader   = "X-Tideline-Signature"
	IdempotencyHeader = "Idempotency-Key"
)

// Config is a webhook sink's settings.
type Config struct {
	Name string
	// URL receives the POSTs.
	URL string
	// Secret is the HMAC-SHA256 key of the signature header; empty sends
	// no signature.
	Secret string
	// Headers are sent with every request (e.g. an API key; Preview shows
	// them, so credentials belong in Secret or in a header the receiver
	// names Authorization).
	Headers map[string]string
	// BatchSize bounds the records per request (default 100).
	BatchSize int
	Mapping   crm.MappingConfig
	// Client tunes the rate limit, timeouts and retries.
	Client crm.ClientConfig
}

// Validate reports every problem of cfg that needs no table (Compile
// checks the mapping against each table).
func (cfg Config) Validate() crm.Problems {
	ps := cfg.Mapping.Check()
	ps.CheckURL("url", cfg.URL)
	ps.CheckLimits(cmp.Or(cfg.BatchSize, DefaultBatch), 10000, cfg.Client)
	return ps
}

// Sink posts mapped records to a URL.
type Sink struct {
	cfg    Config
	log    *zap.Logger
	engine *crm.Engine
	client *crm.Client
}

var _ apply.Sink = (*Sink)(nil)

// New returns a webhook sink. It sends nothing until Apply.
func New(cfg Config, log *zap.Logger) (*Sink, error) {
	if err := cfg.Validate().Err(); err != nil {
		return nil, fmt.Errorf("webhook sink %s: %w", cfg.Name, err)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatch
	}
	return &Sink{cfg: cfg, log: log, engine: crm.NewEngine(cfg.Name, cfg.Mapping), client: crm.NewClient(cfg.Client, nil)}, nil
}

// Close implements apply.Sink.
func (s *Sink) Close() error { return nil }

// Payload is a request's body.
type Payload struct {
	Sink       string   `json:"sink"`
	Table      string   `json:"table"`
	Object     string   `json:"object"`
	IDProperty string   `json:"id_property"`
	Records    []Record `json:"records"`
}

// Record is one record of a Payload: op is upsert, archive or delete;
// position is the change's source position in hex.
type Record struct {
	Op         string         `json:"op"`
	ID         string         `json:"id"`
	Position   string         `json:"position,omitempty"`
	Properties map[string]any `json:"properties,omitempty"`
}

// Apply implements apply.Sink.
func (s *Sink) Apply(ctx context.Context, tb *apply.TableBatch) error {
	p, err := s.engine.Begin(tb)
	if err != nil {
		return err
	}
	reqs, err := s.requests(p)
	if err != nil {
		return err
	}
	for _, req := range reqs {
		resp, err := s.client.Do(ctx, req)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && stalls(resp.Status) {
			err = &crm.HTTPError{Method: req.Method, URL: req.URL, Status: resp.Status, Body: resp.Body}
		}
		if err != nil {
			p.Fail(fmt.Errorf("webhook sink %s: %w", s.cfg.Name, err))
			break
		}
		for _, row := range req.Rows {
			if resp.Status >= 200 && resp.Status < 300 {
				p.Done(row)
			} else {
				p.Reject(row, fmt.Errorf("webhook %s rejected the batch: HTTP %d: %s", s.cfg.URL, resp.Status, clip(resp.Body)))
			}
		}
	}
	return p.Finish()
}

// stalls reports a status that says the sink's settings are wrong.
func stalls(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusProxyAuthRequired:
		return true
	}
	return false
}

// Preview returns the requests Apply would send for tb, without sending.
// The signature header is the one Apply would send (it reveals nothing
// of the secret).
func (s *Sink) Preview(tb *apply.TableBatch) ([]crm.Request, error) {
	// A throwaway engine: Preview must not touch Apply's retry memo.
	p, err := crm.NewEngine(s.cfg.Name, s.cfg.Mapping).Begin(tb)
	if err != nil {
		return nil, err
	}
	return s.requests(p)
}

// requests builds the POSTs of a pass.
func (s *Sink) requests(p *crm.Pass) ([]crm.Request, error) {
	tb := p.Batch()
	recs := append(append([]crm.Record(nil), p.Upserts...), p.Deletes...)
	// Row order, so that the requests of a batch are the same on every
	// retry.
	sortByRow(recs)
	var out []crm.Request
	for _, chunk := range crm.Chunks(recs, s.cfg.BatchSize) {
		body := Payload{Sink: s.cfg.Name, Table: tb.Table.Label(), Object: s.cfg.Mapping.Object, IDProperty: s.cfg.Mapping.IDProperty}
		key := sha256.New()
		fmt.Fprintf(key, "%s\x00", tb.Topic)
		rows := make([]int, 0, len(chunk))
		for _, r := range chunk {
			rec := Record{Op: "upsert", ID: r.ID, Position: hex.EncodeToString(r.Order)}
			if r.Delete {
				rec.Op = string(p.Mapping.Config().OnDelete)
			} else {
				rec.Properties = make(map[string]any, len(r.Props))
				for k, v := range r.Props {
					rec.Properties[k] = crm.JSONValue(v)
				}
			}
			body.Records = append(body.Records, rec)
			row := tb.Rows[r.Row]
			fmt.Fprintf(key, "%d:%s\x00%d:%s\x00", len(row.Key), row.Key, len(row.Order), row.Order)
			rows = append(rows, r.Row)
		}
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("webhook sink %s: encode: %w", s.cfg.Name, err)
		}
		h := http.Header{}
		for k, v := range s.cfg.Headers {
			h.Set(k, v)
		}
		h.Set("Content-Type", "application/json")
		h.Set(IdempotencyHeader, hex.EncodeToString(key.Sum(nil))[:32])
		if s.cfg.Secret != "" {
			h.Set(SignatureHeader, Sign([]byte(s.cfg.Secret), b))
		}
		out = append(out, crm.Request{Method: http.MethodPost, URL: s.cfg.URL, Header: h, Body: b, Rows: rows})
	}
	return out, nil
}

// Sign returns the signature header's value for body: "sha256=" and the
// hex HMAC-SHA256 of body with secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether sig is body's signature with secret, in constant
// time: what a receiver checks.
func Verify(secret, body []byte, sig string) bool {
	return hmac.Equal([]byte(sig), []byte(Sign(secret, body)))
}

func sortByRow(recs []crm.Record) {
	sort.Slice(recs, func(a, b int) bool { return recs[a].Row < recs[b].Row })
}

func clip(b []byte) string {
	if len(b) > 1024 {
		return string(b[:1024]) + "…"
	}
	return string(b)
}

// WantsBeforeImages makes the runtime hand over a delete's whole before
// image (apply.BeforeImages), so that an id property computed from
// non-key columns (an e-mail address) finds the record to archive when
// the source sends it (PostgreSQL: REPLICA IDENTITY FULL).
func (s *Sink) WantsBeforeImages() {}
