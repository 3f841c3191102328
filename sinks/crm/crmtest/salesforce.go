package crmtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Salesforce is a fake of a Salesforce org's REST API: the OAuth 2.0
// token endpoint (client credentials, and the JWT bearer flow with an
// RS256 assertion checked against PublicKey), sObject Collections upsert
// by external ID (PATCH …/composite/sobjects/{SObject}/{field}, at most
// 200 records, per-record results), SOQL lookups by external ID (GET
// …/query) and sObject Collections delete (DELETE …/composite/sobjects?ids=).
// Requests need a token it issued and did not expire (401
// INVALID_SESSION_ID otherwise).
type Salesforce struct {
	*httptest.Server
	recorder

	// ClientID and ClientSecret are the connected app's credentials.
	ClientID, ClientSecret string
	// Username and PublicKey check JWT bearer assertions (iss ClientID,
	// sub Username, aud Audience).
	Username  string
	PublicKey *rsa.PublicKey
	Audience  string
	// Fields, when set, lists each SObject's fields: a record naming
	// another fails the whole request (400 INVALID_FIELD), as Salesforce
	// does.
	Fields map[string][]string
	// Validate, when set, checks a record: a non-empty status code fails
	// it (per-record result).
	Validate func(sobject string, rec map[string]any) (code, msg string)

	tokens  map[string]bool
	issued  int
	nextID  int
	objects map[string][]*SFRecord
}

// SFRecord is a record the fake holds.
type SFRecord struct {
	ID      string
	Fields  map[string]any
	Deleted bool
}

// NewSalesforce starts a fake org; Close it when done.
func NewSalesforce(clientID, clientSecret string) *Salesforce {
	s := &Salesforce{ClientID: clientID, ClientSecret: clientSecret, Audience: "https://login.salesforce.com",
		tokens: map[string]bool{}, objects: map[string][]*SFRecord{}}
	s.Server = httptest.NewServer(s.serve(s.handle))
	return s
}

// ExpireTokens revokes every token issued: the next requests get 401.
func (s *Salesforce) ExpireTokens() {
	s.mu.Lock()
	clear(s.tokens)
	s.mu.Unlock()
}

// TokensIssued is how many tokens the token endpoint gave out.
func (s *Salesforce) TokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Records returns the live records of an SObject keyed by the external
// ID field's value.
func (s *Salesforce) Records(sobject, extField string) map[string]map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[string]any{}
	for _, r := range s.objects[sobject] {
		if !r.Deleted {
			f := map[string]any{}
			for k, v := range r.Fields {
				f[k] = v
			}
			out[fmt.Sprint(r.Fields[extField])] = f
		}
	}
	return out
}

// Deleted returns the external IDs of the deleted records.
func (s *Salesforce) Deleted(sobject, extField string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.objects[sobject] {
		if r.Deleted {
			out = append(out, fmt.Sprint(r.Fields[extField]))
		}
	}
	return out
}

type sfErr struct {
	Message   string `json:"message"`
	ErrorCode string `json:"errorCode"`
}

func sfErrs(code, msg string) []sfErr { return []sfErr{{Message: msg, ErrorCode: code}} }

type sfResult struct {
	ID      string           `json:"id,omitempty"`
	Success bool             `json:"success"`
	Errors  []map[string]any `json:"errors"`
	Created *bool            `json:"created,omitempty"`
}

func sfFail(code, msg string, fields ...string) sfResult {
	if fields == nil {
		fields = []string{}
	}
	return sfResult{Errors: []map[string]any{{"statusCode": code, "message": msg, "fields": fields}}}
}

var dataPath = regexp.MustCompile(`^/services/data/v\d+\.\d/(.*)$`)

func (s *Salesforce) handle(req *http.Request, body []byte) (int, http.Header, any) {
	if req.URL.Path == "/services/oauth2/token" && req.Method == http.MethodPost {
		return s.token(req, body)
	}
	m := dataPath.FindStringSubmatch(req.URL.Path)
	if m == nil {
		return http.StatusNotFound, nil, sfErrs("NOT_FOUND", "The requested resource does not exist")
	}
	auth, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || !s.tokens[auth] {
		return http.StatusUnauthorized, nil, sfErrs("INVALID_SESSION_ID", "Session expired or invalid")
	}
	parts := strings.Split(m[1], "/")
	switch {
	case req.Method == http.MethodPatch && len(parts) == 4 && parts[0] == "composite" && parts[1] == "sobjects":
		return s.upsert(parts[2], parts[3], body)
	case req.Method == http.MethodGet && m[1] == "query":
		return s.query(req.URL.Query().Get("q"))
	case req.Method == http.MethodDelete && m[1] == "composite/sobjects":
		return s.delete(req.URL.Query())
	}
	return http.StatusNotFound, nil, sfErrs("NOT_FOUND", "The requested resource does not exist")
}

func (s *Salesforce) token(req *http.Request, body []byte) (int, http.Header, any) {
	form, _ := url.ParseQuery(string(body))
	bad := func(code, msg string) (int, http.Header, any) {
		return http.StatusBadRequest, nil, map[string]string{"error": code, "error_description": msg}
	}
	switch form.Get("grant_type") {
	case "client_credentials":
		id, secret, ok := req.BasicAuth()
		if !ok {
			id, secret = form.Get("client_id"), form.Get("client_secret")
		}
		if id != s.ClientID || secret != s.ClientSecret {
			return bad("invalid_client", "invalid client credentials")
		}
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		if err := s.checkAssertion(form.Get("assertion")); err != nil {
			return bad("invalid_grant", err.Error())
		}
	default:
		return bad("unsupported_grant_type", "grant type not supported")
	}
	b := make([]byte, 12)
	rand.Read(b)
	tok := "00D" + hex.EncodeToString(b)
	s.tokens[tok] = true
	s.issued++
	// Salesforce's answer carries no expires_in: tokens last until the
	// session times out, which the client learns from a 401.
	return http.StatusOK, nil, map[string]string{"access_token": tok, "instance_url": s.URL, "token_type": "Bearer",
		"id": s.URL + "/id/00D/005", "issued_at": fmt.Sprint(time.Now().UnixMilli())}
}

// checkAssertion verifies a JWT bearer assertion: RS256 over
// header.payload with PublicKey, and its claims.
func (s *Salesforce) checkAssertion(a string) error {
	parts := strings.Split(a, ".")
	if len(parts) != 3 || s.PublicKey == nil {
		return fmt.Errorf("invalid assertion")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("invalid assertion signature encoding")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(s.PublicKey, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("invalid assertion signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("invalid assertion payload")
	}
	var c struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return fmt.Errorf("invalid assertion payload")
	}
	switch {
	case c.Iss != s.ClientID:
		return fmt.Errorf("client identifier invalid")
	case c.Sub != s.Username:
		return fmt.Errorf("user hasn't approved this consumer")
	case c.Aud != s.Audience:
		return fmt.Errorf("audience is invalid")
	case c.Exp < time.Now().Unix():
		return fmt.Errorf("expired authorization code")
	}
	return nil
}

func (s *Salesforce) find(sobject, field string, value any) *SFRecord {
	for _, r := range s.objects[sobject] {
		if !r.Deleted && strings.EqualFold(fmt.Sprint(r.Fields[field]), fmt.Sprint(value)) {
			return r
		}
	}
	return nil
}

func (s *Salesforce) upsert(sobject, ext string, body []byte) (int, http.Header, any) {
	var in struct {
		AllOrNone bool             `json:"allOrNone"`
		Records   []map[string]any `json:"records"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusBadRequest, nil, sfErrs("JSON_PARSER_ERROR", err.Error())
	}
	if len(in.Records) > 200 {
		return http.StatusBadRequest, nil, sfErrs("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
	}
	if fields, ok := s.Fields[sobject]; ok {
		known := map[string]bool{"attributes": true}
		for _, f := range fields {
			known[f] = true
		}
		for _, rec := range in.Records {
			for k := range rec {
				if !known[k] {
					return http.StatusBadRequest, nil, sfErrs("INVALID_FIELD", fmt.Sprintf("No such column '%s' on sobject of type %s", k, sobject))
				}
			}
		}
	}
	results := make([]sfResult, 0, len(in.Records))
	for _, rec := range in.Records {
		attrs, _ := rec["attributes"].(map[string]any)
		switch {
		case attrs == nil || attrs["type"] != sobject:
			results = append(results, sfFail("INVALID_TYPE", "Record type must match the sObject in the URI: "+sobject))
			continue
		case rec[ext] == nil || rec[ext] == "":
			results = append(results, sfFail("MISSING_ARGUMENT", ext+" not specified", ext))
			continue
		}
		if s.Validate != nil {
			if code, msg := s.Validate(sobject, rec); code != "" {
				results = append(results, sfFail(code, msg))
				continue
			}
		}
		r := s.find(sobject, ext, rec[ext])
		created := r == nil
		if created {
			s.nextID++
			r = &SFRecord{ID: fmt.Sprintf("003%015d", s.nextID), Fields: map[string]any{}}
			s.objects[sobject] = append(s.objects[sobject], r)
		}
		for k, v := range rec {
			switch {
			case k == "attributes":
			case v == nil:
				delete(r.Fields, k)
			default:
				r.Fields[k] = v
			}
		}
		results = append(results, sfResult{ID: r.ID, Success: true, Errors: []map[string]any{}, Created: &created})
	}
	return http.StatusOK, nil, results
}

var (
	soqlRe    = regexp.MustCompile(`^SELECT Id, (\w+) FROM (\w+) WHERE (\w+) IN \((.*)\)$`)
	soqlValRe = regexp.MustCompile(`'((?:[^'\\]|\\.)*)'`)
)

// query answers the one SOQL form the sink sends: SELECT Id, f FROM o
// WHERE f IN ('a', 'b').
func (s *Salesforce) query(q string) (int, http.Header, any) {
	m := soqlRe.FindStringSubmatch(q)
	if m == nil || m[1] != m[3] {
		return http.StatusBadRequest, nil, sfErrs("MALFORMED_QUERY", "unexpected token in: "+q)
	}
	field, sobject := m[1], m[2]
	var records []map[string]any
	unescape := strings.NewReplacer(`\\`, `\`, `\'`, `'`, `\n`, "\n", `\r`, "\r", `\t`, "\t")
	for _, v := range soqlValRe.FindAllStringSubmatch(m[4], -1) {
		if r := s.find(sobject, field, unescape.Replace(v[1])); r != nil {
			records = append(records, map[string]any{
				"attributes": map[string]string{"type": sobject, "url": "/services/data/v62.0/sobjects/" + sobject + "/" + r.ID},
				"Id":         r.ID, field: r.Fields[field]})
		}
	}
	if records == nil {
		records = []map[string]any{}
	}
	return http.StatusOK, nil, map[string]any{"totalSize": len(records), "done": true, "records": records}
}

func (s *Salesforce) delete(q url.Values) (int, http.Header, any) {
	ids := strings.Split(q.Get("ids"), ",")
	if q.Get("ids") == "" {
		return http.StatusBadRequest, nil, sfErrs("MISSING_ARGUMENT", "ids not specified")
	}
	if len(ids) > 200 {
		return http.StatusBadRequest, nil, sfErrs("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
	}
	results := make([]sfResult, 0, len(ids))
	for _, id := range ids {
		var rec *SFRecord
		for _, objs := range s.objects {
			for _, r := range objs {
				if r.ID == id {
					rec = r
				}
			}
		}
		switch {
		case rec == nil:
			results = append(results, sfFail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"))
		case rec.Deleted:
			results = append(results, sfFail("ENTITY_IS_DELETED", "entity is deleted"))
		default:
			rec.Deleted = true
			results = append(results, sfResult{ID: id, Success: true, Errors: []map[string]any{}})
		}
	}
	return http.StatusOK, nil, results
}
