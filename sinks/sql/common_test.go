package sqlsink

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/tideline-cdc/tideline/pkg/change"
)

func TestTextValue(t *testing.T) {
	for _, c := range []struct {
		raw  string
		l    change.Logical
		want string
		null bool
		err  bool
	}{
		{raw: "", l: change.String, null: true},
		{raw: "null", l: change.Int32, null: true},
		{raw: `"plain"`, l: change.String, want: "plain"},
		{raw: `"tab\tand \"quotes\""`, l: change.String, want: "tab\tand \"quotes\""},
		{raw: `"{\"a\": 1}"`, l: change.JSON, want: `{"a": 1}`},
		{raw: `"[]"`, l: change.JSON, want: `[]`},
		{raw: `[1,2]`, l: change.Array, want: `[1,2]`},
		{raw: `"2026-11-22T11:14:15.5Z"`, l: change.TimestampTZ, want: "2026-11-22 11:14:15.5+00"},
		{raw: `-42`, l: change.Int16, want: "-42"},
		{raw: `"1"`, l: change.Int32, err: true},
		{raw: `{"a":1}`, l: change.String, err: true},
		{raw: `[1]`, l: change.Decimal, err: true},
		{raw: `{}`, l: change.JSON, err: true},
	} {
		s, null, err := textValue(json.RawMessage(c.raw), c.l, textStyle{zone: true})
		if s != c.want || null != c.null || (err != nil) != c.err {
			t.Errorf("textValue(%s, %s) = %q, %v, %v; want %q, %v, error %v", c.raw, c.l, s, null, err, c.want, c.null, c.err)
		}
	}
}

// TestAppendTimestamp checks the date-time shortcuts against the time
// package, over the years they render themselves and past them.
func TestAppendTimestamp(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	check := func(us int64) {
		want := time.UnixMicro(us).UTC().Format("2006-01-02 15:04:05.999999")
		if got := string(appendTimestamp(nil, us)); got != want {
			t.Fatalf("appendTimestamp(%d) = %q, want %q", us, got, want)
		}
		days := floorDiv(us, 86400e6)
		want = time.Unix(days*86400, 0).UTC().Format("2006-01-02")
		if got := string(appendDate(nil, days)); got != want {
			t.Fatalf("appendDate(%d) = %q, want %q", days, got, want)
		}
	}
	for _, us := range []int64{0, -1, 1, 1e6, -1e6, 86400e6 - 1, minCivilMicros, minCivilMicros - 1, maxCivilMicros, maxCivilMicros + 1, 951782400e6, 1717200000123400} {
		check(us)
	}
	for range 200_000 {
		check(rng.Int64N(2*maxCivilMicros) - maxCivilMicros)
		check(rng.Int64N(4e15) - 2e15) // 1906…2096, to the microsecond
	}
	for _, s := range []string{"0", "-0", "123", "-123", "999999999999999999", "-999999999999999999", "9223372036854775807", "-9223372036854775808", "9223372036854775808", "1.5", "", "-", "+1", "1e3"} {
		got, err := parseInt([]byte(s))
		want, werr := strconv.ParseInt(s, 10, 64)
		if got != want || (err == nil) != (werr == nil) {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", s, got, err, want, werr)
		}
	}
}

func TestMyValue(t *testing.T) {
	for _, c := range []struct {
		raw  string
		l    change.Logical
		want any
		err  bool
	}{
		{raw: "123", l: change.Int32, want: int64(123)},
		{raw: "-9223372036854775808", l: change.Int64, want: int64(-9223372036854775808)},
		{raw: "18446744073709551615", l: change.Uint64, want: uint64(18446744073709551615)},
		{raw: "18446744073709551615", l: change.Int64, err: true},
		{raw: "1.5", l: change.Int32, err: true},
		{raw: `"1"`, l: change.Int32, err: true},
		{raw: "null", l: change.Int16},
		{raw: "true", l: change.Bool, want: int64(1)},
		{raw: `"AP8Q"`, l: change.Bytes, want: []byte{0, 0xff, 0x10}},
		{raw: `"NaN"`, l: change.Float64, err: true},
		{raw: `"x"`, l: change.String, want: "x"},
	} {
		got, err := myValue([]byte(c.raw), c.l)
		if (err != nil) != c.err || !equalValue(got, c.want) {
			t.Errorf("myValue(%s, %s) = %#v, %v; want %#v, error %v", c.raw, c.l, got, err, c.want, c.err)
		}
	}
}

func equalValue(a, b any) bool {
	if x, ok := a.([]byte); ok {
		y, ok := b.([]byte)
		return ok && string(x) == string(y)
	}
	return a == b
}
