package crm_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/sinks/crm"
	"github.com/tideline-cdc/tideline/sinks/crm/crmtest"
)

// born is 2025-11-22 as days since the epoch; signedUp a timestamptz.
const (
	born     = 20414
	signedUp = "2026-11-22T11:14:15.500000Z"
)

func customer(order int, vals map[string]any) apply.Row {
	return crmtest.Row(crmtest.Customers(), change.OpCreate, order, vals)
}

func compile(t *testing.T, m crm.MappingConfig) *crm.Mapping {
	t.Helper()
	mp, err := crm.Compile(m, crmtest.Customers())
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

func TestTransforms(t *testing.T) {
	row := customer(1, map[string]any{"id": 7, "email": "  Ann.Lee@Example.COM ", "name": "Ann", "phone": "06 12 34 56 78",
		"born": born, "signed_up": signedUp, "score": 1.5, "vip": true})
	cases := map[string]struct {
		expr string
		want any
	}{
		"lower":        {`lower(email)`, "  ann.lee@example.com "},
		"upper":        {`upper(name)`, "ANN"},
		"trim":         {`trim(email)`, "Ann.Lee@Example.COM"},
		"nested":       {`lower(trim(email))`, "ann.lee@example.com"},
		"e164":         {`e164(phone, "FR")`, "+33612345678"},
		"e164_intl":    {`e164("+1 415 555 2671", "FR")`, "+14155552671"},
		"format_date":  {`format_date(born, "2006-01-02")`, "2025-11-22"},
		"strftime":     {`format_date(signed_up, "%d/%m/%Y %H:%M")`, "22/11/2026 11:14"},
		"zone":         {`format_date(signed_up, "15:04", "Europe/Paris")`, "12:14"},
		"date_word":    {`format_date(signed_up, "date")`, "2026-11-22"},
		"days_int":     {`format_date(20414, "date")`, "2025-11-22"},
		"micros_int":   {`format_date(1795353255654321, "datetime")`, "2026-11-22T13:14:15.654321Z"},
		"iso_string":   {`format_date("2026-11-22T11:14:15Z", "2006")`, "2026"},
		"unix_ms":      {`unix_ms(born)`, 1763769600000},
		"concat":       {`concat(name, " #", id)`, "Ann #7"},
		"constant":     {`"customer"`, "customer"},
		"number":       {`42`, 42},
		"default":      {`default(nil, "x")`, "x"},
		"default_kept": {`default(name, "x")`, "Ann"},
		"coalesce":     {`nil ?? "y"`, "y"},
		"hash":         {`hash(lower(trim(email)))`, "8ec6f1d2b6e5b4b47f6c58c48d3f1bb2e3e1d3b1ce4f9d2f4aef5f5d50ea6a6b"},
		"bool":         {`vip ? "VIP" : "regular"`, "VIP"},
		"float":        {`score * 2`, 3.0},
		"date_value":   {`born`, time.Date(2025, 11, 22, 0, 0, 0, 0, time.UTC)},
	}
	fields := map[string]string{"email": "lower(trim(email))"}
	for name, c := range cases {
		fields[name] = c.expr
	}
	m := compile(t, crm.MappingConfig{Object: "contacts", IDProperty: "email", Fields: fields})
	props, id, keep, err := m.Apply(row)
	if err != nil || !keep {
		t.Fatalf("Apply: keep %v, %v", keep, err)
	}
	if id != "ann.lee@example.com" {
		t.Errorf("id %q", id)
	}
	for name, c := range cases {
		got := props[name]
		if name == "hash" {
			// sha256 of the normalised email, hex
			if s, _ := got.(string); len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
				t.Errorf("%s: %v is not a sha256 hex", name, got)
			}
			continue
		}
		if tm, ok := c.want.(time.Time); ok {
			if g, _ := got.(time.Time); !g.Equal(tm) {
				t.Errorf("%s = %v, want %v", name, got, c.want)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s: %s = %#v, want %#v", name, c.expr, got, c.want)
		}
	}
	if crm.Text(props["date_value"]) != "2025-11-22" {
		t.Errorf("a date renders as %q", crm.Text(props["date_value"]))
	}
}

func TestHashIsStable(t *testing.T) {
	m := compile(t, crm.MappingConfig{Object: "o", IDProperty: "pid", Fields: map[string]string{"pid": "hash(lower(email))"}})
	_, a, _, _ := m.Apply(customer(1, map[string]any{"id": 1, "email": "A@x.io"}))
	_, b, _, _ := m.Apply(customer(2, map[string]any{"id": 2, "email": "a@X.io"}))
	if a != b || len(a) != 64 {
		t.Errorf("hash ids %q and %q", a, b)
	}
}

func TestNullsPropagate(t *testing.T) {
	m := compile(t, crm.MappingConfig{Object: "o", IDProperty: "id", Fields: map[string]string{
		"id": "concat(id)", "email": "lower(trim(email))", "phone": "e164(phone, \"FR\")", "born": "format_date(born, \"date\")",
		"name": "default(upper(name), \"unknown\")", "h": "hash(email)",
	}})
	props, _, _, err := m.Apply(customer(1, map[string]any{"id": 1, "email": nil, "phone": nil, "born": nil, "name": nil}))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"email", "phone", "born", "h"} {
		if v, ok := props[k]; !ok || v != nil {
			t.Errorf("%s = %#v, want null", k, v)
		}
	}
	if props["name"] != "unknown" {
		t.Errorf("name = %v", props["name"])
	}
}

func TestWhereAndOnDelete(t *testing.T) {
	m := compile(t, crm.MappingConfig{Object: "contacts", IDProperty: "cid", Fields: map[string]string{"cid": "concat(id)", "email": "email"},
		Where: "email != nil && vip", OnDelete: crm.Archive})
	if _, _, keep, _ := m.Apply(customer(1, map[string]any{"id": 1, "email": nil, "vip": true})); keep {
		t.Error("a row without an email passed the filter")
	}
	if _, _, keep, _ := m.Apply(customer(1, map[string]any{"id": 1, "email": "a@b.c", "vip": false})); keep {
		t.Error("a non-VIP row passed the filter")
	}
	if _, id, keep, _ := m.Apply(customer(1, map[string]any{"id": 1, "email": "a@b.c", "vip": true})); !keep || id != "1" {
		t.Errorf("keep %v id %q", keep, id)
	}
	del := crmtest.Row(crmtest.Customers(), change.OpDelete, 2, map[string]any{"id": 1, "email": "a@b.c"})
	props, id, keep, err := m.Apply(del)
	if err != nil || !keep || id != "1" || props != nil {
		t.Errorf("delete: %v %q %v %v", props, id, keep, err)
	}
	if m.DeletesNeedCache() {
		t.Error("an id from the key column needs no cache")
	}
	ign := compile(t, crm.MappingConfig{Object: "contacts", IDProperty: "email", Fields: map[string]string{"email": "email"}, OnDelete: crm.Ignore})
	if _, _, keep, err := ign.Apply(del); keep || err != nil {
		t.Errorf("on_delete ignore kept the delete (%v)", err)
	}
	if !ign.DeletesNeedCache() {
		t.Error("an id from a non-key column needs the cache")
	}
}

func TestAbsentColumnsAreLeftOut(t *testing.T) {
	m := compile(t, crm.MappingConfig{Object: "o", IDProperty: "cid", Fields: map[string]string{"cid": "concat(id)", "name": "upper(name)", "email": "email"}})
	row := customer(1, map[string]any{"id": 1, "email": "e@x.io", "name": json.RawMessage(`"` + change.UnavailableMarker + `"`)})
	props, _, _, err := m.Apply(row)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := props["name"]; ok {
		t.Errorf("an unchanged TOASTed column was sent: %v", props)
	}
	if props["email"] != "e@x.io" {
		t.Errorf("props %v", props)
	}
}

func TestRunTimeErrorsNameTheProperty(t *testing.T) {
	m := compile(t, crm.MappingConfig{Object: "o", IDProperty: "email", Fields: map[string]string{"email": "email", "phone": `e164(phone, "FR")`}})
	_, _, _, err := m.Apply(customer(1, map[string]any{"id": 1, "email": "a@b.c", "phone": "not a phone"}))
	var me *crm.MapError
	if !errors.As(err, &me) || me.Key != "fields.phone" || !strings.Contains(err.Error(), "not a phone") {
		t.Errorf("err = %v", err)
	}
	_, _, _, err = m.Apply(customer(1, map[string]any{"id": 1, "email": nil}))
	if !errors.Is(err, crm.ErrNoID) {
		t.Errorf("a null id: %v", err)
	}
}

func TestCompileErrors(t *testing.T) {
	base := func(fields map[string]string) crm.MappingConfig {
		return crm.MappingConfig{Object: "contacts", IDProperty: "email", Fields: fields}
	}
	cases := []struct {
		name string
		m    crm.MappingConfig
		want []string // every one in the error
	}{
		{"unknown column", base(map[string]string{"email": "email", "firstname": "first_name"}), []string{"fields.firstname", `unknown column "first_name"`, "public.customers"}},
		{"lower on an int", base(map[string]string{"email": "email", "ref": "lower(id)"}), []string{"fields.ref", "lower", "id is int64"}},
		{"e164 on a float", base(map[string]string{"email": "email", "phone": `e164(score, "FR")`}), []string{"fields.phone", "score is float64"}},
		{"format_date on a bool", base(map[string]string{"email": "email", "d": `format_date(vip, "date")`}), []string{"fields.d", "vip is bool"}},
		{"where not boolean", crm.MappingConfig{Object: "c", IDProperty: "email", Fields: map[string]string{"email": "email"}, Where: "name"}, []string{"where"}},
		{"where unknown column", crm.MappingConfig{Object: "c", IDProperty: "email", Fields: map[string]string{"email": "email"}, Where: "mail != nil"}, []string{"where", `unknown column "mail"`}},
		{"syntax", base(map[string]string{"email": "lower(email"}), []string{"fields.email"}},
		{"bad on_delete", crm.MappingConfig{Object: "c", IDProperty: "email", Fields: map[string]string{"email": "email"}, OnDelete: "purge"}, []string{"on_delete", "purge"}},
		{"no id property", crm.MappingConfig{Object: "c", IDProperty: "ext_id", Fields: map[string]string{"email": "email"}}, []string{"id_property", "ext_id"}},
		{"no object", crm.MappingConfig{IDProperty: "email", Fields: map[string]string{"email": "email"}}, []string{"object"}},
	}
	for _, c := range cases {
		_, err := crm.Compile(c.m, crmtest.Customers())
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
	}
	// Every problem at once.
	_, err := crm.Compile(base(map[string]string{"email": "email", "a": "nope", "b": "upper(vip)"}), crmtest.Customers())
	var ps crm.Problems
	if !errors.As(err, &ps) || len(ps) != 2 {
		t.Errorf("want 2 problems, got %v", err)
	}
	// id_property may be a column used as is.
	if _, err := crm.Compile(crm.MappingConfig{Object: "c", IDProperty: "email", Fields: map[string]string{"name": "name"}}, crmtest.Customers()); err != nil {
		t.Errorf("id_property as a column: %v", err)
	}
}

func TestDecode(t *testing.T) {
	cases := []struct {
		l    change.Logical
		raw  string
		want any
	}{
		{change.Int32, `-5`, -5},
		{change.Uint64, `18446744073709551615`, uint64(18446744073709551615)},
		{change.Decimal, `"12.50"`, "12.50"},
		{change.Float64, `"NaN"`, nil}, // checked below
		{change.Bool, `false`, false},
		{change.Date, `1`, time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC)},
		{change.Timestamp, `1000002`, time.Date(1970, 1, 1, 0, 0, 1, 2000, time.UTC)},
		{change.TimestampTZ, `"2026-11-22T11:14:15.500000Z"`, time.Date(2026, 11, 22, 11, 14, 15, 500000000, time.UTC)},
		{change.UUID, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{change.String, `null`, nil},
	}
	for _, c := range cases {
		got, err := crm.Decode(change.Column{Name: "c", Logical: c.l}, json.RawMessage(c.raw))
		if err != nil {
			t.Errorf("%s %s: %v", c.l, c.raw, err)
			continue
		}
		if c.l == change.Float64 {
			if crm.Text(got) != "NaN" {
				t.Errorf("NaN decodes as %v", got)
			}
			continue
		}
		if tm, ok := c.want.(time.Time); ok {
			if g, _ := got.(time.Time); !g.Equal(tm) {
				t.Errorf("%s %s = %v, want %v", c.l, c.raw, got, tm)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s %s = %#v, want %#v", c.l, c.raw, got, c.want)
		}
	}
	if _, err := crm.Decode(change.Column{Name: "d", Logical: change.Date}, json.RawMessage(`"infinity"`)); err == nil {
		t.Error("infinity decoded as a date")
	}
}
