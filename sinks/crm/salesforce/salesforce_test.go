package salesforce_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
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
	"github.com/tideline-cdc/tideline/sinks/crm/salesforce"
)

var fast = crm.ClientConfig{Retries: 3, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Timeout: 2 * time.Second}

var contacts = crm.MappingConfig{Object: "Contact", IDProperty: "External_Id__c", OnDelete: crm.Delete,
	Fields: map[string]string{"External_Id__c": "concat(id)", "Email": "lower(trim(email))", "LastName": "name",
		"Phone": `e164(phone, "FR")`, "Birthdate": "born", "VIP__c": "vip"}}

func newSink(t *testing.T, sf *crmtest.Salesforce, auth salesforce.Auth) *salesforce.Sink {
	t.Helper()
	s, err := salesforce.New(salesforce.Config{Name: "sf", InstanceURL: sf.URL, APIVersion: "62.0", Mapping: contacts, Auth: auth, Client: fast}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func secretAuth() salesforce.Auth { return salesforce.Auth{ClientID: "cid", ClientSecret: "csecret"} }

func customers(from, n int) *apply.TableBatch {
	t := crmtest.Customers()
	var rs []apply.Row
	for i := from; i < from+n; i++ {
		rs = append(rs, crmtest.Row(t, change.OpCreate, i+1, map[string]any{"id": i, "email": fmt.Sprintf("P%d@X.io ", i),
			"name": fmt.Sprint("Doe ", i), "phone": "0612345678", "born": 20414, "vip": i%2 == 0}))
	}
	return crmtest.Batch(t, rs...)
}

func TestUpsertsInCollectionsOf200(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	s := newSink(t, sf, secretAuth())
	if err := s.Apply(context.Background(), customers(0, 450)); err != nil {
		t.Fatal(err)
	}
	got := sf.Records("Contact", "External_Id__c")
	if len(got) != 450 {
		t.Fatalf("the org holds %d contacts", len(got))
	}
	c := got["7"]
	if c["Email"] != "p7@x.io" || c["Phone"] != "+33612345678" || c["Birthdate"] != "2025-11-22" || c["VIP__c"] != false {
		t.Errorf("contact %v", c)
	}
	if n := sf.Count("/composite/sobjects/Contact/External_Id__c", http.StatusOK); n != 3 {
		t.Errorf("%d calls for 450 records", n)
	}
	if sf.TokensIssued() != 1 {
		t.Errorf("%d tokens fetched", sf.TokensIssued())
	}
}

func TestExpiredTokenIsRefreshed(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	s := newSink(t, sf, secretAuth())
	if err := s.Apply(context.Background(), customers(0, 2)); err != nil {
		t.Fatal(err)
	}
	sf.ExpireTokens()
	if err := s.Apply(context.Background(), customers(2, 2)); err != nil {
		t.Fatal(err)
	}
	if sf.TokensIssued() != 2 || sf.Count("", http.StatusUnauthorized) != 1 || len(sf.Records("Contact", "External_Id__c")) != 4 {
		t.Errorf("tokens %d, 401s %d, records %d", sf.TokensIssued(), sf.Count("", http.StatusUnauthorized), len(sf.Records("Contact", "External_Id__c")))
	}
}

func TestJWTBearer(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	sf := crmtest.NewSalesforce("consumer-key", "")
	defer sf.Close()
	sf.Username, sf.PublicKey = "integration@example.com", &key.PublicKey
	s := newSink(t, sf, salesforce.Auth{ClientID: "consumer-key", Username: "integration@example.com", PrivateKey: pemKey})
	if err := s.Apply(context.Background(), customers(0, 3)); err != nil {
		t.Fatal(err)
	}
	if len(sf.Records("Contact", "External_Id__c")) != 3 {
		t.Error("records missing")
	}
	// A key the org does not trust: the sink stops, retrying.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	bad := newSink(t, sf, salesforce.Auth{ClientID: "consumer-key", Username: "integration@example.com",
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(other)}))})
	err = bad.Apply(context.Background(), customers(3, 1))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("err = %v", err)
	}
}

func TestPerRecordFailuresGoToDLQ(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	sf.Validate = func(_ string, rec map[string]any) (string, string) {
		if rec["LastName"] == "Doe 3" {
			return "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Last name Doe 3 is reserved"
		}
		return "", ""
	}
	s := newSink(t, sf, secretAuth())
	rejected, err := crmtest.Drive(context.Background(), s, customers(0, 6), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || !strings.Contains(fmt.Sprint(rejected[`{"id":3}`]), "FIELD_CUSTOM_VALIDATION_EXCEPTION: Last name Doe 3 is reserved") {
		t.Errorf("rejected %v", rejected)
	}
	if len(sf.Records("Contact", "External_Id__c")) != 5 || sf.Count("/composite/sobjects/", 0) != 1 {
		t.Errorf("%d records after %d calls", len(sf.Records("Contact", "External_Id__c")), sf.Count("/composite/sobjects/", 0))
	}
}

func TestTransientFailures(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	// A locked row is retried, not dead-lettered.
	locked := 1
	sf.Validate = func(_ string, rec map[string]any) (string, string) {
		if rec["External_Id__c"] == "1" && locked > 0 {
			locked--
			return "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"
		}
		return "", ""
	}
	sf.Inject(crmtest.Fault{Path: "/composite/", Status: http.StatusServiceUnavailable, Times: 2})
	s := newSink(t, sf, secretAuth())
	rejected, err := crmtest.Drive(context.Background(), s, customers(0, 3), 3)
	if err != nil || len(rejected) != 0 || len(sf.Records("Contact", "External_Id__c")) != 3 {
		t.Errorf("rejected %v, err %v, records %v", rejected, err, sf.Records("Contact", "External_Id__c"))
	}
}

func TestUnknownFieldStopsTheSink(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	sf.Fields = map[string][]string{"Contact": {"External_Id__c", "Email", "LastName", "Phone", "Birthdate"}}
	s := newSink(t, sf, secretAuth())
	err := s.Apply(context.Background(), customers(0, 2))
	if err == nil || apply.IsPermanent(err) || !strings.Contains(err.Error(), "No such column 'VIP__c'") {
		t.Errorf("err = %v", err)
	}
}

func TestDelete(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	s := newSink(t, sf, secretAuth())
	if err := s.Apply(context.Background(), customers(0, 4)); err != nil {
		t.Fatal(err)
	}
	tbl := crmtest.Customers()
	del := crmtest.Batch(tbl, crmtest.Row(tbl, change.OpDelete, 10, map[string]any{"id": 1}), crmtest.Row(tbl, change.OpDelete, 11, map[string]any{"id": 9}))
	if err := s.Apply(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	if got := sf.Records("Contact", "External_Id__c"); len(got) != 3 || got["1"] != nil {
		t.Errorf("records %v", got)
	}
	if d := sf.Deleted("Contact", "External_Id__c"); len(d) != 1 || d[0] != "1" {
		t.Errorf("deleted %v", d)
	}
	// A replay is harmless.
	if err := newSink(t, sf, secretAuth()).Apply(context.Background(), del); err != nil {
		t.Fatal(err)
	}
}

func TestPreviewAndValidate(t *testing.T) {
	sf := crmtest.NewSalesforce("cid", "csecret")
	defer sf.Close()
	s := newSink(t, sf, secretAuth())
	tb := customers(0, 2)
	tb.Rows = append(tb.Rows, crmtest.Row(tb.Table, change.OpDelete, 50, map[string]any{"id": 7}))
	reqs, err := s.Preview(tb)
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 2 || reqs[0].Method != http.MethodPatch || !strings.HasSuffix(reqs[0].URL, "/services/data/v62.0/composite/sobjects/Contact/External_Id__c") ||
		!strings.Contains(string(reqs[0].Body), `"allOrNone":false`) || !strings.Contains(string(reqs[0].Body), `"attributes":{"type":"Contact"}`) {
		t.Errorf("upsert preview %+v", reqs[0])
	}
	if reqs[1].Method != http.MethodGet || !strings.Contains(reqs[1].URL, "External_Id__c+IN+%28%277%27%29") || reqs[1].Note == "" {
		t.Errorf("delete preview %+v", reqs[1])
	}
	if sf.Count("", 0) != 0 {
		t.Error("preview sent requests")
	}
	ps := salesforce.Config{InstanceURL: "nope", Mapping: contacts, BatchSize: 500, Auth: salesforce.Auth{ClientID: "x"}}.Validate()
	keys := map[string]bool{}
	for _, p := range ps {
		keys[p.Key] = true
	}
	if !keys["instance_url"] || !keys["batch_size"] || !keys["client_secret"] {
		t.Errorf("problems %v", ps)
	}
}
