package mysql

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
	"golang.org/x/text/encoding/charmap"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// column is a table column as information_schema describes it.
type column struct {
	name     string
	dataType string // DATA_TYPE: int, varchar, datetime, …
	colType  string // COLUMN_TYPE: int(10) unsigned, enum('a','b'), …
	key      bool
	unsigned bool
	charset  string
	binary   bool     // binary character set (BINARY, VARBINARY, BLOB)
	labels   []string // ENUM and SET members, in order
	bits     int      // integer width, for unsigned wrap-around
	scale    int32    // DECIMAL digits after the point
	logical  change.Logical
}

// newColumn fills the derived fields from information_schema's text.
func newColumn(name, dataType, colType, charset string, key bool) column {
	c := column{name: name, dataType: strings.ToLower(dataType), colType: colType, charset: charset, key: key}
	c.unsigned = strings.Contains(strings.ToLower(colType), "unsigned")
	c.binary = charset == "" && (strings.Contains(c.dataType, "blob") || strings.Contains(c.dataType, "binary"))
	switch c.dataType {
	case "tinyint":
		c.bits = 8
	case "smallint":
		c.bits = 16
	case "mediumint":
		c.bits = 24
	case "int", "integer":
		c.bits = 32
	case "bigint":
		c.bits = 64
	case "enum", "set":
		c.labels = parseLabels(colType)
	case "decimal", "numeric":
		// decimal(p,s): the binlog's value is printed with s digits, as
		// the snapshot's text is.
		if _, after, ok := strings.Cut(colType, ","); ok {
			n, _ := strconv.Atoi(strings.TrimRight(strings.TrimSpace(after), ") unsigdzerofl"))
			c.scale = int32(n)
		}
	}
	c.logical = logicalOf(c)
	return c
}

// logicalOf is the column's logical type (docs/types.md).
func logicalOf(c column) change.Logical {
	switch c.dataType {
	case "tinyint", "year":
		return change.Int16
	case "smallint":
		if c.unsigned {
			return change.Int32
		}
		return change.Int16
	case "mediumint":
		return change.Int32
	case "int", "integer":
		if c.unsigned {
			return change.Int64
		}
		return change.Int32
	case "bigint":
		if c.unsigned {
			return change.Uint64
		}
		return change.Int64
	case "bit":
		return change.Int64
	case "decimal", "numeric":
		return change.Decimal
	case "float":
		return change.Float32
	case "double", "real":
		return change.Float64
	case "date":
		return change.Date
	case "time":
		return change.Time
	case "datetime":
		return change.Timestamp
	case "timestamp":
		return change.TimestampTZ
	case "json":
		return change.JSON
	}
	if c.binary {
		return change.Bytes
	}
	return change.String
}

// parseLabels reads the members of enum('a','b”c') or set(…).
func parseLabels(colType string) []string {
	open := strings.IndexByte(colType, '(')
	if open < 0 {
		return nil
	}
	s := colType[open+1:]
	var out []string
	for len(s) > 0 && s[0] == '\'' {
		var b strings.Builder
		i := 1
		for i < len(s) {
			if s[i] == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					b.WriteByte('\'')
					i += 2
					continue
				}
				break
			}
			b.WriteByte(s[i])
			i++
		}
		out = append(out, b.String())
		s = s[min(i+1, len(s)):]
		s = strings.TrimPrefix(s, ",")
	}
	return out
}

// appendValue appends the JSON representation (docs/types.md) of v, a
// value of column c as go-mysql decodes it from a row event (int8…uint64,
// float32/64, decimal.Decimal, string, []byte; binlog is true: text is in
// the column's character set) or from a text-protocol snapshot row (int64,
// uint64, float64, []byte; text already in the connection's UTF-8). A nil
// v is never passed.
func appendValue(dst []byte, c *column, v any, binlog bool) ([]byte, error) {
	switch c.dataType {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		return appendInteger(dst, c, v)
	case "decimal", "numeric":
		switch x := v.(type) {
		case decimal.Decimal:
			return codec.AppendStringS(dst, x.StringFixed(c.scale)), nil
		case float64: // go-mysql without UseDecimal; not used
			return codec.AppendStringS(dst, strconv.FormatFloat(x, 'f', -1, 64)), nil
		}
		return codec.AppendStringS(dst, text(v)), nil
	case "float", "double", "real":
		switch x := v.(type) {
		case float32:
			return strconv.AppendFloat(dst, float64(x), 'g', -1, 32), nil
		case float64:
			return strconv.AppendFloat(dst, x, 'g', -1, 64), nil
		}
		f, err := strconv.ParseFloat(text(v), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return dst, fmt.Errorf("float %q", text(v))
		}
		return strconv.AppendFloat(dst, f, 'g', -1, 64), nil
	case "date":
		return appendDate(dst, text(v))
	case "datetime":
		return appendDatetime(dst, text(v), false)
	case "timestamp":
		return appendDatetime(dst, text(v), true)
	case "time":
		return appendTime(dst, text(v))
	case "year":
		return appendInteger(dst, c, v)
	case "bit":
		switch x := v.(type) {
		case int64:
			return strconv.AppendUint(dst, uint64(x), 10), nil
		case []byte:
			var n uint64
			for _, b := range x {
				n = n<<8 | uint64(b)
			}
			return strconv.AppendUint(dst, n, 10), nil
		}
		return appendInteger(dst, c, v)
	case "enum":
		if i, ok := asInt(v); ok {
			if i == 0 {
				return codec.AppendStringS(dst, ""), nil // the error value ''
			}
			if int(i) > len(c.labels) {
				return dst, fmt.Errorf("enum index %d out of %d members", i, len(c.labels))
			}
			return codec.AppendStringS(dst, c.labels[i-1]), nil
		}
		return codec.AppendStringS(dst, text(v)), nil
	case "set":
		if m, ok := asInt(v); ok {
			var parts []string
			for i, l := range c.labels {
				if m&(1<<i) != 0 {
					parts = append(parts, l)
				}
			}
			return codec.AppendStringS(dst, strings.Join(parts, ",")), nil
		}
		return codec.AppendStringS(dst, text(v)), nil
	case "json":
		return codec.AppendStringS(dst, text(v)), nil
	}
	if c.binary {
		raw := []byte(text(v))
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, raw)
		return append(dst, '"'), nil
	}
	if binlog && c.charset == "latin1" {
		// MySQL's latin1 is Windows-1252: one byte, one rune.
		s := text(v)
		u := make([]byte, 0, len(s)+8)
		for i := 0; i < len(s); i++ {
			u = utf8.AppendRune(u, charmap.Windows1252.DecodeByte(s[i]))
		}
		return codec.AppendString(dst, u), nil
	}
	return codec.AppendStringS(dst, text(v)), nil
}

func text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	return fmt.Sprint(v)
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	}
	return 0, false
}

// appendInteger writes an integer; a signed value of an UNSIGNED column
// (row events carry no signedness unless the server logs row metadata) is
// wrapped back to its unsigned value.
func appendInteger(dst []byte, c *column, v any) ([]byte, error) {
	switch x := v.(type) {
	case uint64:
		return strconv.AppendUint(dst, x, 10), nil
	case []byte, string:
		s := text(v)
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			return dst, fmt.Errorf("integer %q", s)
		}
		return append(dst, s...), nil
	}
	n, ok := asInt(v)
	if !ok {
		return dst, fmt.Errorf("integer of Go type %T", v)
	}
	if c.unsigned && n < 0 && c.bits > 0 && c.bits < 64 {
		n += 1 << c.bits
	}
	if c.unsigned && n < 0 {
		return strconv.AppendUint(dst, uint64(n), 10), nil
	}
	return strconv.AppendInt(dst, n, 10), nil
}

// appendDate writes days since 1970-01-01; a zero date is null.
func appendDate(dst []byte, s string) ([]byte, error) {
	if strings.HasPrefix(s, "0000-00-00") {
		return append(dst, "null"...), nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return dst, fmt.Errorf("date %q", s)
	}
	return strconv.AppendInt(dst, t.Unix()/86400, 10), nil
}

// appendDatetime writes DATETIME as microseconds since the epoch (the
// wall-clock value read as UTC), and TIMESTAMP, which MySQL stores in UTC,
// as an ISO-8601 UTC string. Zero values are null.
func appendDatetime(dst []byte, s string, zoned bool) ([]byte, error) {
	if strings.HasPrefix(s, "0000-00-00") {
		return append(dst, "null"...), nil
	}
	t, err := time.Parse("2006-01-02 15:04:05.999999", s)
	if err != nil {
		return dst, fmt.Errorf("datetime %q", s)
	}
	if zoned {
		dst = append(dst, '"')
		dst = t.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z")
		return append(dst, '"'), nil
	}
	return strconv.AppendInt(dst, t.UnixMicro(), 10), nil
}

// appendTime writes TIME as signed microseconds (it may be negative or
// above 24 hours).
func appendTime(dst []byte, s string) ([]byte, error) {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	hms, frac, _ := strings.Cut(s, ".")
	parts := strings.Split(hms, ":")
	if len(parts) != 3 {
		return dst, fmt.Errorf("time %q", s)
	}
	var us int64
	for i, mult := range []int64{3600e6, 60e6, 1e6} {
		n, err := strconv.ParseInt(parts[i], 10, 64)
		if err != nil {
			return dst, fmt.Errorf("time %q", s)
		}
		us += n * mult
	}
	if frac != "" {
		f := (frac + "000000")[:6]
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return dst, fmt.Errorf("time %q", s)
		}
		us += n
	}
	if neg {
		us = -us
	}
	return strconv.AppendInt(dst, us, 10), nil
}
