// Package salesforce is the Salesforce sink (type: salesforce): mapped
// records are upserted by external ID with sObject Collections,
//
//	PATCH {instance_url}/services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}
//	{"allOrNone": false, "records": [{"attributes": {"type": "Contact"}, "External_Id__c": "…", …}]}
//
// at most 200 records a call. The mapping's object is the SObject and its
// id_property the external ID field. Values are sent as JSON (null clears
// a field; times ISO-8601, a date at midnight UTC as YYYY-MM-DD, which Date
// fields take).
//
// Auth is OAuth 2.0 with golang.org/x/oauth2: the client credentials flow
// (client_id, client_secret), or the JWT bearer flow (client_id as the
// issuer, username as the subject, private_key signing, audience
// https://login.salesforce.com by default), or a static access token.
// Salesforce tokens carry no expiry: a 401 makes the sink fetch a new
// token and send the request again, once.
//
// Results come per record, in request order: a failed record goes to the
// dead-letter topic with Salesforce's status code and message, except the
// transient ones (UNABLE_TO_LOCK_ROW…), which are sent again. A 400 for
// the whole request that names a field or type that does not exist
// (INVALID_FIELD, INVALID_TYPE, NOT_FOUND), 403 and 404 stop the sink,
// retrying, until its settings are fixed; REQUEST_LIMIT_EXCEEDED (the
// org's API limit) is retried. Any other 400 rejects a single-row batch,
// or makes the runtime split the batch (apply.Permanent) to find the
// record at fault.
//
// Deletes: Salesforce has no archive; on_delete archive and delete both
// delete (to the recycle bin). The records' ids are looked up by external
// ID with a SOQL query (GET …/query?q=SELECT Id, {field} FROM {SObject}
// WHERE {field} IN (…)), then deleted with sObject Collections (DELETE
// …/composite/sobjects?ids=…&allOrNone=false). A record not found, or
// already deleted, is gone already.
package salesforce

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/jwt"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/sinks/crm"
)

// MaxBatch is the most records one sObject Collections call takes.
const MaxBatch = 200

// DefaultAPIVersion is the REST API version used when none is set.
const DefaultAPIVersion = "62.0"

// DefaultAudience is the JWT bearer flow's audience for production orgs
// (https://test.salesforce.com for sandboxes).
const DefaultAudience = "https://login.salesforce.com"

// Config is a Salesforce sink's settings.
type Config struct {
	Name string
	// InstanceURL is the org's URL (https://MyDomain.my.salesforce.com).
	InstanceURL string
	// APIVersion is the REST API version, e.g. "62.0".
	APIVersion string
	// Mapping: Object is the SObject, IDProperty the external ID field.
	Mapping crm.MappingConfig
	// BatchSize bounds the records per call (default and at most 200).
	BatchSize int
	Auth      Auth
	Client    crm.ClientConfig
}

// Auth is how the sink gets its access token: AccessToken (static), or
// ClientID with ClientSecret (client credentials flow), or ClientID with
// Username and PrivateKey (JWT bearer flow).
type Auth struct {
	// TokenURL is the OAuth token endpoint (default
	// {instance_url}/services/oauth2/token).
	TokenURL     string
	ClientID     string
	ClientSecret string
	// Username and PrivateKey (PEM, RSA) select the JWT bearer flow.
	Username   string
	PrivateKey string
	// Audience is the JWT's aud (default DefaultAudience).
	Audience string
	// AccessToken is a token to use as is (no refresh).
	AccessToken string
}

func (cfg *Config) defaults() {
	cfg.InstanceURL = strings.TrimRight(cfg.InstanceURL, "/")
	cfg.APIVersion = strings.TrimPrefix(cfg.APIVersion, "v")
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = MaxBatch
	}
	if cfg.Auth.TokenURL == "" && cfg.InstanceURL != "" {
		cfg.Auth.TokenURL = cfg.InstanceURL + "/services/oauth2/token"
	}
	if cfg.Auth.Audience == "" {
		cfg.Auth.Audience = DefaultAudience
	}
}

var versionRe = regexp.MustCompile(`^\d+\.\d$`)

// Validate reports every problem of cfg that needs no table.
func (cfg Config) Validate() crm.Problems {
	cfg.defaults()
	ps := cfg.Mapping.Check()
	ps.CheckURL("instance_url", cfg.InstanceURL)
	if !versionRe.MatchString(cfg.APIVersion) {
		ps = append(ps, crm.Problem{Key: "api_version", Msg: fmt.Sprintf("%q: want e.g. 62.0", cfg.APIVersion)})
	}
	ps.CheckLimits(cfg.BatchSize, MaxBatch, cfg.Client)
	a := cfg.Auth
	switch {
	case a.AccessToken != "":
	case a.ClientID == "":
		ps = append(ps, crm.Problem{Key: "client_id", Msg: "is required (with client_secret, or with username and private_key), unless token is set"})
	case a.Username != "" || a.PrivateKey != "":
		if a.Username == "" || a.PrivateKey == "" {
			ps = append(ps, crm.Problem{Key: "private_key", Msg: "the JWT bearer flow needs username and private_key"})
		} else if !strings.Contains(a.PrivateKey, "PRIVATE KEY") {
			ps = append(ps, crm.Problem{Key: "private_key", Msg: "want a PEM-encoded RSA private key"})
		}
	case a.ClientSecret == "":
		ps = append(ps, crm.Problem{Key: "client_secret", Msg: "is required for the client credentials flow"})
	}
	if cfg.InstanceURL != "" {
		ps.CheckURL("token_url", a.TokenURL)
	}
	return ps
}

// Sink upserts records into Salesforce.
type Sink struct {
	cfg    Config
	log    *zap.Logger
	engine *crm.Engine
	client *crm.Client
}

var _ apply.Sink = (*Sink)(nil)

// New returns a Salesforce sink. It fetches no token until Apply.
func New(cfg Config, log *zap.Logger) (*Sink, error) {
	cfg.defaults()
	if err := cfg.Validate().Err(); err != nil {
		return nil, fmt.Errorf("salesforce sink %s: %w", cfg.Name, err)
	}
	var auth crm.Auth = crm.Bearer(cfg.Auth.AccessToken)
	if cfg.Auth.AccessToken == "" {
		auth = newTokenAuth(cfg)
	}
	return &Sink{cfg: cfg, log: log, engine: crm.NewEngine(cfg.Name, cfg.Mapping), client: crm.NewClient(cfg.Client, auth)}, nil
}

// Close implements apply.Sink.
func (s *Sink) Close() error { return nil }

// tokenAuth fetches OAuth tokens and fetches a new one after a 401.
type tokenAuth struct {
	source func() oauth2.TokenSource

	mu sync.Mutex
	ts oauth2.TokenSource
}

func newTokenAuth(cfg Config) *tokenAuth {
	timeout := cfg.Client.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	hc := &http.Client{Timeout: timeout}
	if cfg.Client.HTTP != nil {
		hc = &http.Client{Timeout: timeout, Transport: cfg.Client.HTTP.Transport}
	}
	// The token sources outlive any one Apply: they get a context of
	// their own, which only carries the HTTP client.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, hc)
	a := cfg.Auth
	var source func() oauth2.TokenSource
	if a.Username != "" {
		jc := &jwt.Config{Email: a.ClientID, Subject: a.Username, PrivateKey: []byte(a.PrivateKey),
			TokenURL: a.TokenURL, Audience: a.Audience, Expires: 3 * time.Minute}
		source = func() oauth2.TokenSource { return jc.TokenSource(ctx) }
	} else {
		cc := &clientcredentials.Config{ClientID: a.ClientID, ClientSecret: a.ClientSecret, TokenURL: a.TokenURL,
			AuthStyle: oauth2.AuthStyleInParams}
		source = func() oauth2.TokenSource { return cc.TokenSource(ctx) }
	}
	return &tokenAuth{source: source, ts: source()}
}

// Authorize implements crm.Auth.
func (t *tokenAuth) Authorize(_ context.Context, r *http.Request) error {
	t.mu.Lock()
	ts := t.ts
	t.mu.Unlock()
	tok, err := ts.Token()
	if err != nil {
		return err
	}
	r.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	return nil
}

// Invalidate implements crm.Auth: the next request fetches a new token.
func (t *tokenAuth) Invalidate() bool {
	t.mu.Lock()
	t.ts = t.source()
	t.mu.Unlock()
	return true
}

// Wire types.
type (
	collection struct {
		AllOrNone bool             `json:"allOrNone"`
		Records   []map[string]any `json:"records"`
	}
	result struct {
		ID      string    `json:"id"`
		Success bool      `json:"success"`
		Errors  []sfError `json:"errors"`
		Created bool      `json:"created"`
	}
	sfError struct {
		StatusCode string   `json:"statusCode"`
		ErrorCode  string   `json:"errorCode"`
		Message    string   `json:"message"`
		Fields     []string `json:"fields"`
	}
	queryResult struct {
		Done    bool             `json:"done"`
		Records []map[string]any `json:"records"`
	}
)

func (s *Sink) dataURL() string {
	return s.cfg.InstanceURL + "/services/data/v" + s.cfg.APIVersion
}

// upserts builds the upsert calls.
func (s *Sink) upserts(recs []crm.Record) ([]crm.Request, error) {
	sobject, ext := s.cfg.Mapping.Object, s.cfg.Mapping.IDProperty
	u := s.dataURL() + "/composite/sobjects/" + url.PathEscape(sobject) + "/" + url.PathEscape(ext)
	var out []crm.Request
	for _, chunk := range crm.Chunks(recs, s.cfg.BatchSize) {
		body := collection{Records: make([]map[string]any, 0, len(chunk))}
		rows := make([]int, 0, len(chunk))
		for _, r := range chunk {
			rec := make(map[string]any, len(r.Props)+1)
			for k, v := range r.Props {
				rec[k] = crm.JSONValue(v)
			}
			rec["attributes"] = map[string]string{"type": sobject}
			rec[ext] = r.ID
			body.Records = append(body.Records, rec)
			rows = append(rows, r.Row)
		}
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("salesforce sink %s: encode: %w", s.cfg.Name, err)
		}
		out = append(out, crm.Request{Method: http.MethodPatch, URL: u, Header: jsonHeader(), Body: b, Rows: rows})
	}
	return out, nil
}

// lookup builds the SOQL query that finds records by external ID.
func (s *Sink) lookup(chunk []crm.Record) crm.Request {
	ext := s.cfg.Mapping.IDProperty
	quoted := make([]string, len(chunk))
	rows := make([]int, len(chunk))
	for i, r := range chunk {
		quoted[i] = soqlString(r.ID)
		rows[i] = r.Row
	}
	q := fmt.Sprintf("SELECT Id, %s FROM %s WHERE %s IN (%s)", ext, s.cfg.Mapping.Object, ext, strings.Join(quoted, ", "))
	return crm.Request{Method: http.MethodGet, URL: s.dataURL() + "/query?q=" + url.QueryEscape(q), Rows: rows}
}

// remove builds the delete call of record ids.
func (s *Sink) remove(ids []string, rows []int) crm.Request {
	return crm.Request{Method: http.MethodDelete, URL: s.dataURL() + "/composite/sobjects?allOrNone=false&ids=" + url.QueryEscape(strings.Join(ids, ",")), Rows: rows}
}

// soqlString quotes s as a SOQL string literal.
func soqlString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return "'" + r.Replace(s) + "'"
}

func jsonHeader() http.Header {
	return http.Header{"Content-Type": {"application/json"}}
}

// Preview returns the requests Apply would send for tb, without sending.
// Deleting needs the record ids a query returns: Preview shows the
// queries, and notes the delete that follows.
func (s *Sink) Preview(tb *apply.TableBatch) ([]crm.Request, error) {
	p, err := crm.NewEngine(s.cfg.Name, s.cfg.Mapping).Begin(tb)
	if err != nil {
		return nil, err
	}
	out, err := s.upserts(p.Upserts)
	if err != nil {
		return nil, err
	}
	for _, chunk := range crm.Chunks(p.Deletes, s.cfg.BatchSize) {
		r := s.lookup(chunk)
		r.Note = "then DELETE " + s.dataURL() + "/composite/sobjects?allOrNone=false&ids=… with the ids of the records found"
		out = append(out, r)
	}
	return out, nil
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
	for _, req := range ups {
		if err := s.upsert(ctx, p, req); err != nil {
			return err
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

// transientCodes are per-record status codes that a retry can clear.
var transientCodes = map[string]bool{
	"UNABLE_TO_LOCK_ROW": true, "REQUEST_RUNNING_TOO_LONG": true, "SERVER_UNAVAILABLE": true,
	"REQUEST_LIMIT_EXCEEDED": true, "TXN_SECURITY_METERING_ERROR": true,
}

// settingsCodes are request errors that say the sink's settings are
// wrong: every record would fail the same way.
var settingsCodes = map[string]bool{
	"INVALID_FIELD": true, "INVALID_TYPE": true, "NOT_FOUND": true, "INVALID_SESSION_ID": true,
	"INSUFFICIENT_ACCESS": true, "API_DISABLED_FOR_ORG": true, "FUNCTIONALITY_NOT_ENABLED": true,
}

// send sends req; a transient failure (after the client's retries) or an
// answer that says the settings are wrong marks the pass failed and
// returns a nil response.
func (s *Sink) send(ctx context.Context, p *crm.Pass, req crm.Request) (*crm.Response, error) {
	resp, err := s.client.Do(ctx, req)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err == nil && resp.Status >= 400 {
		code := requestCode(resp.Body)
		if resp.Status == http.StatusUnauthorized || resp.Status == http.StatusForbidden || resp.Status == http.StatusNotFound ||
			settingsCodes[code] || transientCodes[code] {
			err = &crm.HTTPError{Method: req.Method, URL: req.URL, Status: resp.Status, Body: resp.Body}
		}
	}
	if err != nil {
		p.Fail(fmt.Errorf("salesforce sink %s: %w", s.cfg.Name, err))
		return nil, nil
	}
	return resp, nil
}

// requestCode is the errorCode of a request-level error body.
func requestCode(body []byte) string {
	var errs []sfError
	if json.Unmarshal(body, &errs) == nil && len(errs) > 0 {
		return errs[0].ErrorCode
	}
	return ""
}

// upsert sends one upsert call and settles its rows.
func (s *Sink) upsert(ctx context.Context, p *crm.Pass, req crm.Request) error {
	resp, err := s.send(ctx, p, req)
	if resp == nil {
		return err
	}
	if resp.Status != http.StatusOK {
		s.rejectRequest(p, req, resp)
		return nil
	}
	var results []result
	if err := json.Unmarshal(resp.Body, &results); err != nil || len(results) != len(req.Rows) {
		p.Fail(fmt.Errorf("salesforce sink %s: %s: %d results for %d records (%v)", s.cfg.Name, req.URL, len(results), len(req.Rows), err))
		return nil
	}
	s.settle(p, req.Rows, results, nil)
	return nil
}

// settle applies per-record results (request order) to rows; ok says
// which failures mean done.
func (s *Sink) settle(p *crm.Pass, rows []int, results []result, ok func(sfError) bool) {
	for i, r := range results {
		row := rows[i]
		if r.Success {
			p.Done(row)
			continue
		}
		var msgs []string
		transient, done := false, len(r.Errors) > 0
		for _, e := range r.Errors {
			transient = transient || transientCodes[e.StatusCode]
			done = done && ok != nil && ok(e)
			m := e.StatusCode + ": " + e.Message
			if len(e.Fields) > 0 {
				m += " (" + strings.Join(e.Fields, ", ") + ")"
			}
			msgs = append(msgs, m)
		}
		err := fmt.Errorf("salesforce: %s", strings.Join(msgs, "; "))
		switch {
		case done:
			p.Done(row)
		case transient:
			p.Fail(fmt.Errorf("salesforce sink %s: %w", s.cfg.Name, err))
		default:
			p.Reject(row, err)
		}
	}
}

// rejectRequest handles a 400 for a whole request: a single row is
// rejected; several make the runtime split the batch.
func (s *Sink) rejectRequest(p *crm.Pass, req crm.Request, resp *crm.Response) {
	msg := strings.TrimSpace(string(resp.Body))
	var errs []sfError
	if json.Unmarshal(resp.Body, &errs) == nil && len(errs) > 0 {
		var ms []string
		for _, e := range errs {
			ms = append(ms, e.ErrorCode+": "+e.Message)
		}
		msg = strings.Join(ms, "; ")
	}
	err := fmt.Errorf("salesforce: HTTP %d: %s", resp.Status, msg)
	if len(req.Rows) == 1 {
		p.Reject(req.Rows[0], err)
		return
	}
	p.Fail(apply.Permanent(fmt.Errorf("salesforce sink %s: %d records: %w", s.cfg.Name, len(req.Rows), err)))
}

// delete deletes a chunk of deleted rows: it queries their ids by external
// ID, then deletes the records found.
func (s *Sink) delete(ctx context.Context, p *crm.Pass, chunk []crm.Record) error {
	q := s.lookup(chunk)
	resp, err := s.send(ctx, p, q)
	if resp == nil {
		return err
	}
	var qr queryResult
	if resp.Status != http.StatusOK {
		s.rejectRequest(p, q, resp)
		return nil
	}
	if err := json.Unmarshal(resp.Body, &qr); err != nil || !qr.Done {
		p.Fail(fmt.Errorf("salesforce sink %s: %s: unreadable or partial query result (%v)", s.cfg.Name, q.URL, err))
		return nil
	}
	found := map[string]string{} // external id (lower-cased) -> record id
	for _, r := range qr.Records {
		id, _ := r["Id"].(string)
		found[strings.ToLower(crm.Text(r[s.cfg.Mapping.IDProperty]))] = id
	}
	var ids []string
	var rows []int
	for _, r := range chunk {
		if id, ok := found[strings.ToLower(r.ID)]; ok {
			ids, rows = append(ids, id), append(rows, r.Row)
		} else {
			p.Done(r.Row) // not there: never synced, or deleted already
		}
	}
	if len(ids) == 0 {
		return nil
	}
	req := s.remove(ids, rows)
	resp, err = s.send(ctx, p, req)
	if resp == nil {
		return err
	}
	if resp.Status != http.StatusOK {
		s.rejectRequest(p, req, resp)
		return nil
	}
	var results []result
	if err := json.Unmarshal(resp.Body, &results); err != nil || len(results) != len(rows) {
		p.Fail(fmt.Errorf("salesforce sink %s: %s: %d results for %d records (%v)", s.cfg.Name, req.URL, len(results), len(rows), err))
		return nil
	}
	s.settle(p, rows, results, func(e sfError) bool {
		return e.StatusCode == "ENTITY_IS_DELETED" || e.StatusCode == "INVALID_CROSS_REFERENCE_KEY"
	})
	return nil
}

// WantsBeforeImages makes the runtime hand over a delete's whole before
// image (apply.BeforeImages), so that an id property computed from
// non-key columns (an e-mail address) finds the record to archive when
// the source sends it (PostgreSQL: REPLICA IDENTITY FULL).
func (s *Sink) WantsBeforeImages() {}
