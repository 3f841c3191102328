package postgres

import (
	"encoding/json"
	"testing"

	"github.com/jackc/pglogrepl"
)

func TestConverters(t *testing.T) {
	cases := []struct {
		conv conv
		in   string
		want string
	}{
		{convNumber, "-42", "-42"},
		{convFloat, "1.5", "1.5"},
		{convFloat, "NaN", `"NaN"`},
		{convFloat, "-Infinity", `"-Infinity"`},
		{convString, "12345678901234567890.000000000001", `"12345678901234567890.000000000001"`},
		{convBool, "t", "true"},
		{convBool, "f", "false"},
		{convBytea, `\x00ff10`, `"AP8Q"`},
		{convDate, "1970-01-02", "1"},
		{convDate, "1969-12-31", "-1"},
		{convDate, "10000-01-01", "2932897"},
		{convDate, "infinity", `"infinity"`},
		{convDate, "0044-03-15 BC", `"0044-03-15 BC"`},
		{convTime, "00:00:01.5", "1500000"},
		{convTime, "24:00:00", "86400000000"},
		{convTimestamp, "1970-01-01 00:00:00.000001", "1"},
		{convTimestamp, "2026-11-22 13:14:15.654321", "1795353255654321"},
		{convTimestamp, "-infinity", `"-infinity"`},
		{convTimestamptz, "2026-11-22 13:14:15.5+02", `"2026-11-22T11:14:15.500000Z"`},
		{convTimestamptz, "2026-11-22 13:14:15-03:30", `"2026-11-22T16:44:15.000000Z"`},
		{convTimetz, "01:00:00+02", `"23:00:00.000000Z"`},
		{arrayConv(convNumber, ','), "{1,NULL,3}", "[1,null,3]"},
		{arrayConv(convNumber, ','), "{{1,2},{3,4}}", "[[1,2],[3,4]]"},
		{arrayConv(convNumber, ','), "[0:1]={5,6}", "[5,6]"},
		{arrayConv(convNumber, ','), "{}", "[]"},
		{arrayConv(convString, ','), `{"a b","c,d",NULL,"e\"f","NULL"}`, `["a b","c,d",null,"e\"f","NULL"]`},
		{arrayConv(convDate, ','), `{1970-01-02,NULL}`, `[1,null]`},
		{arrayConv(convString, ';'), `{(1,1),(0,0);(2,2),(1,1)}`, `["(1,1),(0,0)","(2,2),(1,1)"]`},
		{convTimestamp, "294276-12-31 23:59:59.999999", `"294276-12-31 23:59:59.999999"`},
		{convTimestamptz, "294276-12-31 23:59:59.999999+00", `"294276-12-31 23:59:59.999999+00"`},
	}
	for _, c := range cases {
		got, err := c.conv(nil, []byte(c.in))
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("%q -> %s, want %s", c.in, got, c.want)
		}
		if !json.Valid(got) {
			t.Errorf("%q -> %s is not JSON", c.in, got)
		}
	}
	for _, bad := range []struct {
		conv conv
		in   string
	}{{convNumber, "1e5"}, {convBool, "yes"}, {convBytea, "ff"}, {convDate, "22/11/2026"}, {arrayConv(convNumber, ','), "{1,2"}, {convTimestamptz, "2026-11-22 13:14:15"}} {
		if got, err := bad.conv(nil, []byte(bad.in)); err == nil {
			t.Errorf("%q accepted as %s", bad.in, got)
		}
	}
}

func FuzzArray(f *testing.F) {
	for _, s := range []string{"{1,2}", `{"a","b\"c"}`, "{{1},{2}}", "{NULL}", "{}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := arrayConv(convString, ',')(nil, []byte(s))
		if err == nil && !json.Valid(out) {
			t.Fatalf("%q -> invalid JSON %s", s, out)
		}
	})
}

func TestPositionRoundTrip(t *testing.T) {
	for _, lsn := range []uint64{0, 1, 0x16B3748, 0x16_B374D848, 0xFFFFFFFF_FFFFFFFF} {
		p := position(pglogrepl.LSN(lsn))
		if want := pglogrepl.LSN(lsn).String(); string(p) != want {
			t.Errorf("position(%x) = %s, want %s", lsn, p, want)
		}
		back, err := parsePosition(p)
		if err != nil || uint64(back) != lsn {
			t.Errorf("parsePosition(%s) = %x, %v", p, back, err)
		}
	}
	if _, err := parsePosition("nope"); err == nil {
		t.Error("parsePosition accepted garbage")
	}
}
