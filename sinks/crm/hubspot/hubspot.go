// Package hubspot is the HubSpot sink (type: hubspot): mapped records are
// upserted with the CRM v3 batch API,
//
//	POST {url}/crm/v3/objects/{object}/batch/upsert
//	{"inputs": [{"id": "ann@example.com", "idProperty": "email", "properties": {…}}]}
//
// at most 100 inputs a call, with a private app's token (Authorization:
// Bearer). Property values are sent as text (HubSpot's form); null clears a
// property (""). Times are ISO-8601 (a date at midnight UTC as
// YYYY-MM-DD), which date and datetime properties take.
//
// Deletes: on_delete archive (or delete: HubSpot's API deletes by
// archiving; a permanent GDPR delete is not done) looks the records up by
// the id property (POST …/batch/read with idProperty), then archives them
// by record id (POST …/batch/archive). A record not found is already gone.
// With id_property hs_object_id the ids are record ids and the lookup is
// skipped.
//
// Limits: a token bucket keeps the sink under rate_per_second (default
// 10: a private app's burst limit is 100 to 190 requests per 10 seconds
// depending on the account's tier, and the sink is not alone); the
// X-HubSpot-RateLimit-Remaining and -Interval-Milliseconds headers hold
// requests when the window is spent, and a 429 is retried after its
// Retry-After (or the window).
//
// Results: a 207 multi-status response names the failed inputs by id
// (errors[].context.ids); those rows go to the dead-letter topic with
// HubSpot's message, the others are applied. A 400 that names inputs
// rejects those; one that names none rejects a single-row batch, or is
// returned as apply.Permanent so that the runtime splits the batch to find
// the row at fault. 401, 403 and 404 (token, scopes, object type) stop
// the sink, retrying, until its settings are fixed.
package hubspot

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/sinks/crm"
)

// DefaultURL is HubSpot's API.
const DefaultURL = "https://api.hubapi.com"

// MaxBatch is the most inputs one batch call takes.
const MaxBatch = 100

// Config is a HubSpot sink's settings.
type Config struct {
	Name string
	// URL is the API's base (default DefaultURL).
	URL string
	// Token is the private app's access token.
	Token string
	// BatchSize bounds the inputs per call (default and at most 100).
	BatchSize int
	Mapping   crm.MappingConfig
	// Client tunes the rate limit (RatePerSecond, default 10), timeouts
	// and retries.
	Client crm.ClientConfig
}

// DefaultRate is the default rate_per_second.
const DefaultRate = 10

func (cfg *Config) defaults() {
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	if cfg.BatchSize == 0 {
		cfg.BatchSize = MaxBatch
	}
	if cfg.Client.RatePerSecond == 0 {
		cfg.Client.RatePerSecond = DefaultRate
	}
}

// Validate reports every problem of cfg that needs no table.
func (cfg Config) Validate() crm.Problems {
	cfg.defaults()
	ps := cfg.Mapping.Check()
	ps.CheckURL("url", cfg.URL)
	if cfg.Token == "" {
		ps = append(ps, crm.Problem{Key: "token", Msg: "is required (a private app's access token, e.g. ${HUBSPOT_TOKEN})"})
	}
	ps.CheckLimits(cfg.BatchSize, MaxBatch, cfg.Client)
	return ps
}

// Sink upserts records into HubSpot.
type Sink struct {
	cfg    Config
	log    *zap.Logger
	engine *crm.Engine
	client *crm.Client
}

var _ apply.Sink = (*Sink)(nil)

// New returns a HubSpot sink. It sends nothing until Apply.
func New(cfg Config, log *zap.Logger) (*Sink, error) {
	cfg.defaults()
	if err := cfg.Validate().Err(); err != nil {
		return nil, fmt.Errorf("hubspot sink %s: %w", cfg.Name, err)
	}
	s := &Sink{cfg: cfg, log: log, engine: crm.NewEngine(cfg.Name, cfg.Mapping), client: crm.NewClient(cfg.Client, crm.Bearer(cfg.Token))}
	s.client.Inspect = rateHeaders
	return s, nil
}

// Close implements apply.Sink.
func (s *Sink) Close() error { return nil }

// rateHeaders holds requests when HubSpot says the window is spent.
func rateHeaders(r *crm.Response) time.Duration {
	if v := r.Header.Get("X-HubSpot-RateLimit-Remaining"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n <= 0 {
			if ms, err := strconv.Atoi(r.Header.Get("X-HubSpot-RateLimit-Interval-Milliseconds")); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
			return time.Second
		}
	}
	if v := r.Header.Get("X-HubSpot-RateLimit-Secondly-Remaining"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n <= 0 {
			return time.Second
		}
	}
	return 0
}

// Wire types of the batch API.
type (
	upsertInput struct {
		ID         string            `json:"id"`
		IDProperty string            `json:"idProperty"`
		Properties map[string]string `json:"properties"`
	}
	inputs[T any] struct {
		Inputs []T `json:"inputs"`
	}
	readRequest struct {
		IDProperty string   `json:"idProperty,omitempty"`
		Inputs     []idOnly `json:"inputs"`
		Properties []string `json:"properties"`
	}
	idOnly struct {
		ID string `json:"id"`
	}
	batchResponse struct {
		Status  string `json:"status"`
		Results []struct {
			ID         string            `json:"id"`
			Properties map[string]string `json:"properties"`
		} `json:"results"`
		Errors []batchError `json:"errors"`
	}
	batchError struct {
		Status   string              `json:"status"`
		Category string              `json:"category"`
		Message  string              `json:"message"`
		Context  map[string][]string `json:"context"`
	}
	// errorResponse is the body of a 4xx.
	errorResponse struct {
		Status   string              `json:"status"`
		Message  string              `json:"message"`
		Category string              `json:"category"`
		Context  map[string][]string `json:"context"`
		Errors   []struct {
			Message string              `json:"message"`
			Context map[string][]string `json:"context"`
		} `json:"errors"`
	}
)

func (s *Sink) objectURL(op string) string {
	return s.cfg.URL + "/crm/v3/objects/" + url.PathEscape(s.cfg.Mapping.Object) + "/batch/" + op
}

// upserts builds the upsert calls.
func (s *Sink) upserts(recs []crm.Record) ([]crm.Request, error) {
	var out []crm.Request
	for _, chunk := range crm.Chunks(recs, s.cfg.BatchSize) {
		body := inputs[upsertInput]{Inputs: make([]upsertInput, 0, len(chunk))}
		rows := make([]int, 0, len(chunk))
		for _, r := range chunk {
			props := make(map[string]string, len(r.Props))
			for k, v := range r.Props {
				props[k] = crm.Text(v)
			}
			body.Inputs = append(body.Inputs, upsertInput{ID: r.ID, IDProperty: s.cfg.Mapping.IDProperty, Properties: props})
			rows = append(rows, r.Row)
		}
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("hubspot sink %s: encode: %w", s.cfg.Name, err)
		}
		out = append(out, crm.Request{Method: http.MethodPost, URL: s.objectURL("upsert"), Header: jsonHeader(), Body: b, Rows: rows})
	}
	return out, nil
}

// byRecordID reports whether the id property holds HubSpot's record ids
// (no lookup needed to archive).
func (s *Sink) byRecordID() bool { return s.cfg.Mapping.IDProperty == "hs_object_id" }

// lookups builds the batch reads that find deleted rows' record ids.
func (s *Sink) lookups(recs []crm.Record) ([]crm.Request, error) {
	var out []crm.Request
	for _, chunk := range crm.Chunks(recs, s.cfg.BatchSize) {
		body := readRequest{IDProperty: s.cfg.Mapping.IDProperty, Properties: []string{s.cfg.Mapping.IDProperty}}
		rows := make([]int, 0, len(chunk))
		for _, r := range chunk {
			body.Inputs = append(body.Inputs, idOnly{r.ID})
			rows = append(rows, r.Row)
		}
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("hubspot sink %s: encode: %w", s.cfg.Name, err)
		}
		out = append(out, crm.Request{Method: http.MethodPost, URL: s.objectURL("read") + "?archived=false", Header: jsonHeader(), Body: b, Rows: rows})
	}
	return out, nil
}

// archive builds the archive call of record ids (at most BatchSize).
func (s *Sink) archive(ids []string, rows []int) (crm.Request, error) {
	body := inputs[idOnly]{}
	for _, id := range ids {
		body.Inputs = append(body.Inputs, idOnly{id})
	}
	b, err := json.Marshal(body)
	if err != nil {
		return crm.Request{}, fmt.Errorf("hubspot sink %s: encode: %w", s.cfg.Name, err)
	}
	return crm.Request{Method: http.MethodPost, URL: s.objectURL("archive"), Header: jsonHeader(), Body: b, Rows: rows}, nil
}

func jsonHeader() http.Header {
	return http.Header{"Content-Type": {"application/json"}}
}

// Preview returns the requests Apply would send for tb, without sending.
// Archiving needs the record ids a lookup returns: Preview shows the
// lookups, and notes the archive that follows.
func (s *Sink) Preview(tb *apply.TableBatch) ([]crm.Request, error) {
	p, err := crm.NewEngine(s.cfg.Name, s.cfg.Mapping).Begin(tb)
	if err != nil {
		return nil, err
	}
	out, err := s.upserts(p.Upserts)
	if err != nil {
		return nil, err
	}
	if s.byRecordID() {
		for _, chunk := range crm.Chunks(p.Deletes, s.cfg.BatchSize) {
			ids, rows := idsOf(chunk)
			req, err := s.archive(ids, rows)
			if err != nil {
				return nil, err
			}
			out = append(out, req)
		}
		return out, nil
	}
	reads, err := s.lookups(p.Deletes)
	if err != nil {
		return nil, err
	}
	for _, r := range reads {
		r.Note = "then POST " + s.objectURL("archive") + " with the ids of the records found"
		out = append(out, r)
	}
	return out, nil
}

func idsOf(recs []crm.Record) ([]string, []int) {
	ids := make([]string, len(recs))
	rows := make([]int, len(recs))
	for i, r := range recs {
		ids[i], rows[i] = r.ID, r.Row
	}
	return ids, rows
}

// Apply implements apply.Sink.
func (s *Sink) Apply(ctx context.Context, tb *apply.TableBatch) error {
	p, err := s.engine.Begin(tb)
	if err != nil {
		return err
	}
	ups, err := s.upserts(p.Upserts)
	if err != nil {
		return err
	}
	byRow := recordsByRow(p.Upserts)
	for _, req := range ups {
		if err := s.upsert(ctx, p, req, byRow); err != nil {
			return err // cancelled
		}
		if p.Failed() {
			return p.Finish()
		}
	}
	for _, chunk := range crm.Chunks(p.Deletes, s.cfg.BatchSize) {
		if err := s.delete(ctx, p, chunk); err != nil {
			return err
		}
		if p.Failed() {
			break
		}
	}
	return p.Finish()
}

func recordsByRow(recs []crm.Record) map[int]crm.Record {
	m := make(map[int]crm.Record, len(recs))
	for _, r := range recs {
		m[r.Row] = r
	}
	return m
}

// send sends req; a transient failure (after the client's retries) or a
// status that says the settings are wrong marks the pass failed and
// returns nil.
func (s *Sink) send(ctx context.Context, p *crm.Pass, req crm.Request) (*crm.Response, error) {
	resp, err := s.client.Do(ctx, req)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err == nil {
		switch resp.Status {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			err = &crm.HTTPError{Method: req.Method, URL: req.URL, Status: resp.Status, Body: resp.Body}
		}
	}
	if err != nil {
		p.Fail(fmt.Errorf("hubspot sink %s: %w", s.cfg.Name, err))
		return nil, nil
	}
	return resp, nil
}

// upsert sends one upsert call and settles its rows.
func (s *Sink) upsert(ctx context.Context, p *crm.Pass, req crm.Request, byRow map[int]crm.Record) error {
	resp, err := s.send(ctx, p, req)
	if resp == nil {
		return err
	}
	switch {
	case resp.Status == http.StatusOK || resp.Status == http.StatusCreated:
		for _, row := range req.Rows {
			p.Done(row)
		}
	case resp.Status == http.StatusMultiStatus:
		var br batchResponse
		if err := json.Unmarshal(resp.Body, &br); err != nil {
			p.Fail(fmt.Errorf("hubspot sink %s: %s: unreadable 207 response: %v", s.cfg.Name, req.URL, err))
			return nil
		}
		failed := s.attribute(p, req, byRow, br.Errors)
		for _, row := range req.Rows {
			if !failed[row] {
				p.Done(row)
			}
		}
	default:
		s.rejectRequest(p, req, byRow, resp)
	}
	return nil
}

// attribute rejects the rows the errors name (context.ids), and returns
// them. An error that names no row of the request makes the rows it could
// be about undecided: one row is rejected; several make the pass
// permanent (the runtime splits the batch).
func (s *Sink) attribute(p *crm.Pass, req crm.Request, byRow map[int]crm.Record, errs []batchError) map[int]bool {
	failed := map[int]bool{}
	var unnamed []string
	for _, e := range errs {
		named := false
		for _, id := range e.Context["ids"] {
			for _, row := range req.Rows {
				if sameID(byRow[row].ID, id) {
					p.Reject(row, fmt.Errorf("hubspot: %s: %s", e.Category, e.Message))
					failed[row] = true
					named = true
				}
			}
		}
		if !named {
			unnamed = append(unnamed, e.Category+": "+e.Message)
		}
	}
	if len(unnamed) > 0 {
		var rest []int
		for _, row := range req.Rows {
			if !failed[row] {
				rest = append(rest, row)
			}
		}
		err := fmt.Errorf("hubspot: %s", strings.Join(unnamed, "; "))
		if len(rest) == 1 {
			p.Reject(rest[0], err)
			failed[rest[0]] = true
		} else {
			// Undecided rows stay unsettled (they are sent again).
			for _, row := range rest {
				failed[row] = true
			}
			p.Fail(apply.Permanent(fmt.Errorf("hubspot sink %s: %d records, errors naming none of them: %w", s.cfg.Name, len(rest), err)))
		}
	}
	return failed
}

// rejectRequest handles a 4xx other than the settings' ones: the rows the
// error names are rejected; the rest are sent again.
func (s *Sink) rejectRequest(p *crm.Pass, req crm.Request, byRow map[int]crm.Record, resp *crm.Response) {
	var er errorResponse
	_ = json.Unmarshal(resp.Body, &er)
	msg := er.Message
	if msg == "" {
		msg = strings.TrimSpace(string(resp.Body))
	}
	errs := []batchError{{Category: er.Category, Message: fmt.Sprintf("HTTP %d: %s", resp.Status, msg), Context: er.Context}}
	for _, e := range er.Errors {
		errs = append(errs, batchError{Category: er.Category, Message: e.Message, Context: e.Context})
	}
	s.attribute(p, req, byRow, errs)
}

// sameID compares ids as HubSpot does for emails (case-insensitively).
func sameID(a, b string) bool { return a == b || strings.EqualFold(a, b) }

// delete archives a chunk of deleted rows: it looks their record ids up
// by the id property, then archives those found.
func (s *Sink) delete(ctx context.Context, p *crm.Pass, chunk []crm.Record) error {
	ids, rows := idsOf(chunk)
	if !s.byRecordID() {
		reads, err := s.lookups(chunk)
		if err != nil {
			return err
		}
		req := reads[0] // one chunk, one read
		resp, err := s.send(ctx, p, req)
		if resp == nil {
			return err
		}
		if resp.Status != http.StatusOK && resp.Status != http.StatusMultiStatus {
			s.rejectRequest(p, req, recordsByRow(chunk), resp)
			return nil
		}
		var br batchResponse
		if err := json.Unmarshal(resp.Body, &br); err != nil {
			p.Fail(fmt.Errorf("hubspot sink %s: %s: unreadable response: %v", s.cfg.Name, req.URL, err))
			return nil
		}
		found := map[string]string{} // id property value (lower-cased) -> record id
		for _, r := range br.Results {
			found[strings.ToLower(r.Properties[s.cfg.Mapping.IDProperty])] = r.ID
		}
		ids, rows = ids[:0], rows[:0]
		for _, r := range chunk {
			if id, ok := found[strings.ToLower(r.ID)]; ok {
				ids, rows = append(ids, id), append(rows, r.Row)
			} else {
				p.Done(r.Row) // not there (never synced, or archived already)
			}
		}
		if len(ids) == 0 {
			return nil
		}
	}
	req, err := s.archive(ids, rows)
	if err != nil {
		return err
	}
	resp, err := s.send(ctx, p, req)
	if resp == nil {
		return err
	}
	if resp.Status >= 200 && resp.Status < 300 {
		for _, row := range rows {
			p.Done(row)
		}
		return nil
	}
	byRow := map[int]crm.Record{}
	for i, row := range rows {
		byRow[row] = crm.Record{Row: row, ID: ids[i]}
	}
	s.rejectRequest(p, req, byRow, resp)
	return nil
}

// WantsBeforeImages makes the runtime hand over a delete's whole before
// image (apply.BeforeImages), so that an id property computed from
// non-key columns (an e-mail address) finds the record to archive when
// the source sends it (PostgreSQL: REPLICA IDENTITY FULL).
func (s *Sink) WantsBeforeImages() {}
