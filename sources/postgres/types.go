package postgres

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// The text output of every value depends on session settings; the source
// sets these on both its replication and its snapshot connections so the
// converters below see one format (docs/types.md).
var sessionParams = map[string]string{
	"DateStyle":          "ISO, YMD",
	"TimeZone":           "UTC",
	"IntervalStyle":      "iso_8601",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
	"application_name":   "tideline",
}

// conv appends the JSON representation of a column's text value to dst.
type conv func(dst, text []byte) ([]byte, error)

// Well-known type OIDs (pg_type.h); see typeInfo for everything else.
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidBPChar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidTimetz      = 1266
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

// scalarConv returns the converter of a scalar (non-array) type OID. Types
// it does not know (enums, domains over text, inet, money, …) are strings:
// their text form, as PostgreSQL prints it.
func scalarConv(oid uint32) conv {
	switch oid {
	case oidInt2, oidInt4, oidInt8, oidOID:
		return convNumber
	case oidFloat4, oidFloat8:
		return convFloat
	case oidNumeric:
		return convString // lossless: numerics keep every digit as a string
	case oidBool:
		return convBool
	case oidBytea:
		return convBytea
	case oidDate:
		return convDate
	case oidTime:
		return convTime
	case oidTimestamp:
		return convTimestamp
	case oidTimestamptz:
		return convTimestamptz
	case oidTimetz:
		return convTimetz
	}
	return convString
}

// scalarLogical is the logical type (docs/types.md) of a scalar type OID.
func scalarLogical(oid uint32) change.Logical {
	switch oid {
	case oidInt2:
		return change.Int16
	case oidInt4:
		return change.Int32
	case oidInt8, oidOID:
		return change.Int64
	case oidFloat4:
		return change.Float32
	case oidFloat8:
		return change.Float64
	case oidNumeric:
		return change.Decimal
	case oidBool:
		return change.Bool
	case oidBytea:
		return change.Bytes
	case oidDate:
		return change.Date
	case oidTime:
		return change.Time
	case oidTimestamp:
		return change.Timestamp
	case oidTimestamptz:
		return change.TimestampTZ
	case oidTimetz:
		return change.TimeTZ
	case oidInterval:
		return change.Interval
	case oidJSON, oidJSONB:
		return change.JSON
	case oidUUID:
		return change.UUID
	}
	return change.String
}

func convString(dst, text []byte) ([]byte, error) { return codec.AppendString(dst, text), nil }

func convNumber(dst, text []byte) ([]byte, error) {
	for _, c := range text {
		if (c < '0' || c > '9') && c != '-' {
			return dst, fmt.Errorf("integer %q", text)
		}
	}
	return append(dst, text...), nil
}

// convFloat writes finite floats as JSON numbers and NaN/±Infinity, which
// JSON cannot hold, as the strings "NaN", "Infinity", "-Infinity".
func convFloat(dst, text []byte) ([]byte, error) {
	switch string(text) {
	case "NaN", "Infinity", "-Infinity":
		return codec.AppendString(dst, text), nil
	}
	return append(dst, text...), nil
}

func convBool(dst, text []byte) ([]byte, error) {
	switch string(text) {
	case "t":
		return append(dst, "true"...), nil
	case "f":
		return append(dst, "false"...), nil
	}
	return dst, fmt.Errorf("boolean %q", text)
}

// convBytea turns hex output (\x0a0b) into base64, Debezium's default for
// binary columns.
func convBytea(dst, text []byte) ([]byte, error) {
	if len(text) < 2 || text[0] != '\\' || text[1] != 'x' {
		return dst, fmt.Errorf("bytea %q is not in hex format", text)
	}
	raw := make([]byte, hex.DecodedLen(len(text)-2))
	if _, err := hex.Decode(raw, text[2:]); err != nil {
		return dst, fmt.Errorf("bytea: %w", err)
	}
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, raw)
	return append(dst, '"'), nil
}

// maxYear is the last year whose microseconds since 1970 fit in an int64
// (PostgreSQL's timestamps reach 294276 AD).
const maxYear = 294246

// Special values with no number form are written as strings: infinities,
// BC dates and years past maxYear.
func special(dst, text []byte) ([]byte, bool) {
	switch string(text) {
	case "infinity", "-infinity":
		return codec.AppendString(dst, text), true
	}
	if bytes.HasSuffix(text, []byte(" BC")) {
		return codec.AppendString(dst, text), true
	}
	if y, _, _, _, ok := parseDate(text); ok && y > maxYear {
		return codec.AppendString(dst, text), true
	}
	return dst, false
}

// convDate writes days since 1970-01-01 (Debezium io.debezium.time.Date).
func convDate(dst, text []byte) ([]byte, error) {
	if d, ok := special(dst, text); ok {
		return d, nil
	}
	y, m, d, rest, ok := parseDate(text)
	if !ok || len(rest) != 0 {
		return dst, fmt.Errorf("date %q", text)
	}
	days := time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC).Unix() / 86400
	return strconv.AppendInt(dst, days, 10), nil
}

// convTime writes microseconds since midnight (io.debezium.time.MicroTime).
func convTime(dst, text []byte) ([]byte, error) {
	us, rest, ok := parseClock(text)
	if !ok || len(rest) != 0 {
		return dst, fmt.Errorf("time %q", text)
	}
	return strconv.AppendInt(dst, us, 10), nil
}

// convTimestamp writes microseconds since the epoch, the wall-clock value
// read as UTC (io.debezium.time.MicroTimestamp).
func convTimestamp(dst, text []byte) ([]byte, error) {
	if d, ok := special(dst, text); ok {
		return d, nil
	}
	us, rest, ok := parseTimestamp(text)
	if !ok || len(rest) != 0 {
		return dst, fmt.Errorf("timestamp %q", text)
	}
	return strconv.AppendInt(dst, us, 10), nil
}

// convTimestamptz writes an ISO-8601 string in UTC with microseconds,
// e.g. "2026-11-22T10:04:05.123456Z" (io.debezium.time.ZonedTimestamp).
// The session's TimeZone is UTC, so the text ends in "+00".
func convTimestamptz(dst, text []byte) ([]byte, error) {
	if d, ok := special(dst, text); ok {
		return d, nil
	}
	us, rest, ok := parseTimestamp(text)
	if !ok {
		return dst, fmt.Errorf("timestamptz %q", text)
	}
	off, ok := parseOffset(rest)
	if !ok {
		return dst, fmt.Errorf("timestamptz %q: offset", text)
	}
	t := time.UnixMicro(us - off*1e6).UTC()
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, "2006-01-02T15:04:05.000000Z")
	return append(dst, '"'), nil
}

// convTimetz writes an ISO-8601 time in UTC, e.g. "08:11:12.000000Z"
// (io.debezium.time.ZonedTime).
func convTimetz(dst, text []byte) ([]byte, error) {
	us, rest, ok := parseClock(text)
	if !ok {
		return dst, fmt.Errorf("timetz %q", text)
	}
	off, ok := parseOffset(rest)
	if !ok {
		return dst, fmt.Errorf("timetz %q: offset", text)
	}
	us = ((us-off*1e6)%86400e6 + 86400e6) % 86400e6
	t := time.UnixMicro(us).UTC()
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, "15:04:05.000000Z")
	return append(dst, '"'), nil
}

// parseDate reads YYYY-MM-DD (the year may have more than four digits).
func parseDate(b []byte) (y, m, d int, rest []byte, ok bool) {
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		y = y*10 + int(b[i]-'0')
		i++
	}
	if i < 4 || len(b) < i+6 || b[i] != '-' || b[i+3] != '-' {
		return 0, 0, 0, nil, false
	}
	m, ok1 := two(b[i+1:])
	d, ok2 := two(b[i+4:])
	return y, m, d, b[i+6:], ok1 && ok2
}

func two(b []byte) (int, bool) {
	if len(b) < 2 || b[0] < '0' || b[0] > '9' || b[1] < '0' || b[1] > '9' {
		return 0, false
	}
	return int(b[0]-'0')*10 + int(b[1]-'0'), true
}

// parseClock reads HH:MM:SS[.ffffff] into microseconds.
func parseClock(b []byte) (us int64, rest []byte, ok bool) {
	if len(b) < 8 || b[2] != ':' || b[5] != ':' {
		return 0, nil, false
	}
	h, ok1 := two(b)
	mi, ok2 := two(b[3:])
	s, ok3 := two(b[6:])
	if !ok1 || !ok2 || !ok3 {
		return 0, nil, false
	}
	us = (int64(h)*3600 + int64(mi)*60 + int64(s)) * 1e6
	b = b[8:]
	if len(b) > 0 && b[0] == '.' {
		b = b[1:]
		frac, n := int64(0), 0
		for n < len(b) && b[n] >= '0' && b[n] <= '9' {
			if n < 6 {
				frac = frac*10 + int64(b[n]-'0')
			}
			n++
		}
		for k := n; k < 6; k++ {
			frac *= 10
		}
		us += frac
		b = b[n:]
	}
	return us, b, true
}

// parseTimestamp reads "YYYY-MM-DD HH:MM:SS[.ffffff]" as UTC microseconds.
func parseTimestamp(b []byte) (int64, []byte, bool) {
	y, m, d, rest, ok := parseDate(b)
	if !ok || len(rest) < 1 || rest[0] != ' ' {
		return 0, nil, false
	}
	us, rest, ok := parseClock(rest[1:])
	if !ok {
		return 0, nil, false
	}
	days := time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC).Unix() / 86400
	return days*86400e6 + us, rest, true
}

// parseOffset reads a UTC offset "+HH", "-HH:MM" or "+HH:MM:SS" in seconds.
func parseOffset(b []byte) (int64, bool) {
	if len(b) < 3 || (b[0] != '+' && b[0] != '-') {
		return 0, false
	}
	sign := int64(1)
	if b[0] == '-' {
		sign = -1
	}
	h, ok := two(b[1:])
	if !ok {
		return 0, false
	}
	secs := int64(h) * 3600
	b = b[3:]
	for _, mult := range []int64{60, 1} {
		if len(b) == 0 {
			break
		}
		if b[0] != ':' {
			return 0, false
		}
		v, ok := two(b[1:])
		if !ok {
			return 0, false
		}
		secs += int64(v) * mult
		b = b[3:]
	}
	return sign * secs, len(b) == 0
}

// arrayConv returns a converter for arrays whose elements convert with
// elem: a PostgreSQL array literal becomes a JSON array (nested for
// multi-dimensional arrays), NULL elements become null.
func arrayConv(elem conv, delim byte) conv {
	return func(dst, text []byte) ([]byte, error) {
		// A literal may start with dimension bounds: "[0:2]={1,2,3}".
		if len(text) > 0 && text[0] == '[' {
			if i := bytes.IndexByte(text, '='); i >= 0 {
				text = text[i+1:]
			}
		}
		out, rest, err := parseArray(dst, text, elem, delim)
		if err != nil {
			return dst, fmt.Errorf("array %q: %w", text, err)
		}
		if len(rest) != 0 {
			return dst, fmt.Errorf("array %q: trailing %q", text, rest)
		}
		return out, nil
	}
}

var errArray = fmt.Errorf("malformed array literal")

func parseArray(dst, b []byte, elem conv, delim byte) ([]byte, []byte, error) {
	if len(b) == 0 || b[0] != '{' {
		return dst, b, errArray
	}
	b = b[1:]
	dst = append(dst, '[')
	if len(b) > 0 && b[0] == '}' {
		return append(dst, ']'), b[1:], nil
	}
	var scratch []byte
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		var err error
		switch {
		case len(b) == 0:
			return dst, b, errArray
		case b[0] == '{':
			dst, b, err = parseArray(dst, b, elem, delim)
		case b[0] == '"':
			scratch = scratch[:0]
			i := 1
			for ; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' && i+1 < len(b) {
					i++
				}
				scratch = append(scratch, b[i])
			}
			if i >= len(b) {
				return dst, b, errArray
			}
			b = b[i+1:]
			dst, err = elem(dst, scratch)
		default:
			i := 0
			for i < len(b) && b[i] != delim && b[i] != '}' {
				i++
			}
			if i == 4 && string(b[:4]) == "NULL" {
				dst = append(dst, "null"...)
			} else {
				dst, err = elem(dst, bytes.TrimSpace(b[:i]))
			}
			b = b[i:]
		}
		if err != nil {
			return dst, b, err
		}
		if len(b) == 0 {
			return dst, b, errArray
		}
		if b[0] == '}' {
			return append(dst, ']'), b[1:], nil
		}
		if b[0] != delim {
			return dst, b, errArray
		}
		b = b[1:]
	}
}
