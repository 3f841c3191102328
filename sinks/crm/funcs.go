package crm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/nyaruka/phonenumbers"
)

// Functions lists the transforms mapping expressions may call, besides
// expr's own builtins (len, split, replace, fromJSON, …). Each returns
// null for a null argument, so default() can follow it.
//
//	lower(s), upper(s), trim(s)    case and surrounding white space
//	e164(phone, region)            E.164 phone number ("+33612345678"); region
//	                               (ISO 3166 code, e.g. "FR") is used when the
//	                               number has no +country prefix; a number
//	                               that is not valid sends the row to the
//	                               dead-letter topic
//	format_date(t, layout[, zone]) a date or time as text: layout is Go's
//	                               ("2006-01-02"), strftime's ("%Y-%m-%d"), or
//	                               date, datetime (RFC 3339); zone is an IANA
//	                               name (default UTC)
//	unix_ms(t)                     milliseconds since the epoch (HubSpot's
//	                               date properties take them)
//	concat(a, b, …)                the values as text, nulls skipped
//	default(v, fallback)           fallback when v is null (also: v ?? fallback)
//	hash(v)                        SHA-256 of v's text, hex: a pseudonymous id
//
// format_date and unix_ms take what a date, timestamp or timestamptz
// column holds (a time), an ISO-8601 string, or an integer: days since
// 1970-01-01 when under a million, microseconds since the epoch otherwise
// (Tideline's date and timestamp values).
var Functions = []string{"lower", "upper", "trim", "e164", "format_date", "unix_ms", "concat", "default", "hash"}

var functionOptions = []expr.Option{
	expr.Function("lower", strFunc(strings.ToLower), new(func(string) string)),
	expr.Function("upper", strFunc(strings.ToUpper), new(func(string) string)),
	expr.Function("trim", strFunc(strings.TrimSpace), new(func(string) string)),
	expr.Function("e164", e164, new(func(string, string) string)),
	expr.Function("format_date", formatDate,
		new(func(time.Time, string) string), new(func(int, string) string), new(func(string, string) string),
		new(func(time.Time, string, string) string), new(func(int, string, string) string), new(func(string, string, string) string)),
	expr.Function("unix_ms", unixMs, new(func(time.Time) int), new(func(int) int), new(func(string) int)),
	expr.Function("concat", concat, new(func(...any) string)),
	expr.Function("default", func(p ...any) (any, error) {
		if p[0] == nil {
			return p[1], nil
		}
		return p[0], nil
	}, new(func(any, any) any)),
	expr.Function("hash", func(p ...any) (any, error) {
		if p[0] == nil {
			return nil, nil
		}
		sum := sha256.Sum256([]byte(Text(p[0])))
		return hex.EncodeToString(sum[:]), nil
	}, new(func(any) string)),
}

// strFunc lifts a string function to a transform: null stays null.
func strFunc(f func(string) string) func(...any) (any, error) {
	return func(p ...any) (any, error) {
		if p[0] == nil {
			return nil, nil
		}
		s, ok := p[0].(string)
		if !ok {
			return nil, fmt.Errorf("want text, got %T", p[0])
		}
		return f(s), nil
	}
}

func e164(p ...any) (any, error) {
	if p[0] == nil {
		return nil, nil
	}
	s, ok := p[0].(string)
	if !ok {
		return nil, fmt.Errorf("e164: want text, got %T", p[0])
	}
	region, _ := p[1].(string)
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	num, err := phonenumbers.Parse(s, strings.ToUpper(region))
	if err != nil {
		return nil, fmt.Errorf("e164: %q is not a phone number (region %s): %v", s, region, err)
	}
	if !phonenumbers.IsValidNumber(num) {
		return nil, fmt.Errorf("e164: %q is not a valid phone number (region %s)", s, region)
	}
	return phonenumbers.Format(num, phonenumbers.E164), nil
}

func formatDate(p ...any) (any, error) {
	if p[0] == nil {
		return nil, nil
	}
	t, err := asTime(p[0])
	if err != nil {
		return nil, fmt.Errorf("format_date: %w", err)
	}
	layout, _ := p[1].(string)
	if len(p) > 2 {
		zone, _ := p[2].(string)
		loc, err := time.LoadLocation(zone)
		if err != nil {
			return nil, fmt.Errorf("format_date: zone %q: %w", zone, err)
		}
		t = t.In(loc)
	}
	switch strings.ToLower(layout) {
	case "date":
		layout = time.DateOnly
	case "datetime", "rfc3339", "iso8601":
		layout = time.RFC3339Nano
	default:
		if strings.Contains(layout, "%") {
			layout = strftime(layout)
		}
	}
	return t.Format(layout), nil
}

func unixMs(p ...any) (any, error) {
	if p[0] == nil {
		return nil, nil
	}
	t, err := asTime(p[0])
	if err != nil {
		return nil, fmt.Errorf("unix_ms: %w", err)
	}
	return int(t.UnixMilli()), nil
}

// asTime reads the forms format_date takes.
func asTime(v any) (time.Time, error) {
	switch x := v.(type) {
	case time.Time:
		return x.UTC(), nil
	case int:
		if x > -1_000_000 && x < 1_000_000 {
			return time.Unix(int64(x)*86400, 0).UTC(), nil
		}
		return time.UnixMicro(int64(x)).UTC(), nil
	case int64:
		return asTime(int(x))
	case string:
		return parseTime(x)
	}
	return time.Time{}, fmt.Errorf("want a date, a time or an ISO-8601 string, got %T", v)
}

var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999", time.DateOnly}

func parseTime(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not an ISO-8601 date or time", s)
}

var strftimeVerbs = map[byte]string{
	'Y': "2006", 'y': "06", 'm': "01", 'd': "02", 'e': "_2", 'H': "15", 'I': "03", 'M': "04", 'S': "05",
	'p': "PM", 'b': "Jan", 'B': "January", 'a': "Mon", 'A': "Monday", 'j': "002", 'f': "000000",
	'z': "-0700", 'Z': "MST", 'F': "2006-01-02", 'T': "15:04:05", '%': "%",
}

// strftime turns a strftime format into a Go layout; unknown verbs are
// kept as written.
func strftime(f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] == '%' && i+1 < len(f) {
			if g, ok := strftimeVerbs[f[i+1]]; ok {
				b.WriteString(g)
				i++
				continue
			}
		}
		b.WriteByte(f[i])
	}
	return b.String()
}

func concat(p ...any) (any, error) {
	var b strings.Builder
	for _, v := range p {
		if v != nil {
			b.WriteString(Text(v))
		}
	}
	return b.String(), nil
}
