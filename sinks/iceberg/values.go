package icebergsink

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/iceberg-go"
	"github.com/shopspring/decimal"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
)

// icebergType maps a source column to the Iceberg type of its target column
// (the package documentation has the table).
func icebergType(c change.Column) iceberg.Type {
	switch c.Logical {
	case change.Int16, change.Int32:
		return iceberg.PrimitiveTypes.Int32
	case change.Int64:
		return iceberg.PrimitiveTypes.Int64
	case change.Uint64:
		// Iceberg has no unsigned integers: decimal(20,0) holds every
		// BIGINT UNSIGNED value.
		return iceberg.DecimalTypeOf(20, 0)
	case change.Decimal:
		// Iceberg decimals stop at 38 digits; wider or unconstrained
		// numerics stay text so that no digit is lost.
		if p, s, ok := change.Precision(c.Type); ok && p <= 38 && s >= 0 && s <= p {
			return iceberg.DecimalTypeOf(p, s)
		}
		return iceberg.PrimitiveTypes.String
	case change.Float32:
		return iceberg.PrimitiveTypes.Float32
	case change.Float64:
		return iceberg.PrimitiveTypes.Float64
	case change.Bool:
		return iceberg.PrimitiveTypes.Bool
	case change.Bytes:
		return iceberg.PrimitiveTypes.Binary
	case change.Date:
		return iceberg.PrimitiveTypes.Date
	case change.Time:
		return iceberg.PrimitiveTypes.Time
	case change.Timestamp:
		return iceberg.PrimitiveTypes.Timestamp
	case change.TimestampTZ:
		return iceberg.PrimitiveTypes.TimestampTz
	}
	// String, JSON (its text), UUID (its text: engines disagree on the
	// uuid type's physical form), TimeTZ, Interval (ISO-8601 text), Array
	// (its JSON text) and anything else.
	return iceberg.PrimitiveTypes.String
}

// promotion returns the type a column of type have must become to hold
// want's values, if Iceberg allows the change (int to long, float to
// double, a decimal's precision widened at the same scale).
func promotion(have, want iceberg.Type) (iceberg.Type, bool) {
	switch h := have.(type) {
	case iceberg.Int32Type:
		if _, ok := want.(iceberg.Int64Type); ok {
			return want, true
		}
	case iceberg.Float32Type:
		if _, ok := want.(iceberg.Float64Type); ok {
			return want, true
		}
	case iceberg.DecimalType:
		if w, ok := want.(iceberg.DecimalType); ok && w.Scale() == h.Scale() && w.Precision() > h.Precision() {
			return want, true
		}
	}
	return nil, false
}

// convert turns a column's JSON value (docs/types.md) into the Go value
// of the Iceberg type typ that the arrow builders take and the scans give
// back: int32, int64, float32, float64, bool, string, []byte,
// decimal128.Num, arrow.Date32, arrow.Time64 (microseconds) or
// arrow.Timestamp (microseconds); nil for null. l is the source's logical
// type, which narrows what is accepted (an int16 column's values must fit
// in 16 bits, although Iceberg stores them as int).
//
// raw is one JSON value without surrounding white space, not absent.
func convert(raw json.RawMessage, typ iceberg.Type, l change.Logical) (any, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if _, ok := typ.(iceberg.StringType); ok {
		return text(raw, l)
	}
	if raw[0] == '{' || raw[0] == '[' {
		return nil, fmt.Errorf("%s column: not a JSON scalar: %.60s", typ, raw)
	}
	quoted := raw[0] == '"'
	var s string
	if quoted {
		var err error
		if s, err = codec.JSONString(raw); err != nil {
			return nil, err
		}
	} else {
		s = string(raw)
	}
	switch t := typ.(type) {
	case iceberg.Int32Type:
		lo, hi := int64(math.MinInt32), int64(math.MaxInt32)
		if l == change.Int16 {
			lo, hi = math.MinInt16, math.MaxInt16
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if quoted || err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s column: %.60s is not an integer in [%d, %d]", l, raw, lo, hi)
		}
		return int32(n), nil
	case iceberg.Int64Type:
		n, err := strconv.ParseInt(s, 10, 64)
		if quoted || err != nil {
			return nil, fmt.Errorf("%s column: %.60s is not a 64-bit integer", l, raw)
		}
		return n, nil
	case iceberg.DecimalType:
		return decimalValue(s, t)
	case iceberg.Float32Type, iceberg.Float64Type:
		// NaN and the infinities come as strings ("NaN", "Infinity"),
		// which ParseFloat reads.
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || (!quoted && isInfOrNaN(f)) {
			return nil, fmt.Errorf("%s column: %.60s is not a number", l, raw)
		}
		if _, ok := t.(iceberg.Float32Type); ok {
			return float32(f), nil
		}
		return f, nil
	case iceberg.BooleanType:
		switch string(raw) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return nil, fmt.Errorf("bool column: got %.60s", raw)
	case iceberg.BinaryType:
		if !quoted {
			return nil, fmt.Errorf("bytes column: got %.60s", raw)
		}
		if l != change.Bytes {
			return []byte(s), nil
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("bytes column: not base64: %w", err)
		}
		return b, nil
	case iceberg.DateType:
		days, err := strconv.ParseInt(s, 10, 32)
		if quoted || err != nil {
			// "infinity", BC dates: PostgreSQL's text, no Iceberg date.
			return nil, fmt.Errorf("date column: %.60s is not a day number", raw)
		}
		return arrow.Date32(days), nil
	case iceberg.TimeType:
		us, err := strconv.ParseInt(s, 10, 64)
		if quoted || err != nil || us < 0 || us >= 24*3600e6 {
			// MySQL's TIME may be negative or pass 24 h; Iceberg's time
			// is a time of day.
			return nil, fmt.Errorf("time column: %.60s is not a time of day in microseconds", raw)
		}
		return arrow.Time64(us), nil
	case iceberg.TimestampType:
		us, err := strconv.ParseInt(s, 10, 64)
		if quoted || err != nil {
			return nil, fmt.Errorf("timestamp column: %.60s is not microseconds", raw)
		}
		return arrow.Timestamp(us), nil
	case iceberg.TimestampTzType:
		if !quoted {
			us, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("timestamptz column: got %.60s", raw)
			}
			return arrow.Timestamp(us), nil
		}
		ts, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, fmt.Errorf("timestamptz column: %q is not an ISO-8601 time", s)
		}
		return arrow.Timestamp(ts.UnixMicro()), nil
	}
	return nil, fmt.Errorf("column type %s is not supported", typ)
}

func isInfOrNaN(f float64) bool { return math.IsNaN(f) || math.IsInf(f, 0) }

// text is the string a string column holds for raw: a JSON string's
// content (the JSON text, for a json column), or the JSON text of any
// other value (an array, a number in a column that became text).
func text(raw json.RawMessage, l change.Logical) (any, error) {
	if raw[0] != '"' {
		if l == change.JSON {
			return nil, fmt.Errorf("json column: want a string holding JSON, got %.60s", raw)
		}
		return string(raw), nil
	}
	return codec.JSONString(raw)
}

// decimalValue parses a decimal's text exactly: a value with more
// fractional digits than the column's scale, or more digits than its
// precision, is an error rather than rounded.
func decimalValue(s string, t iceberg.DecimalType) (any, error) {
	d, err := decimal.NewFromString(s)
	if err != nil {
		return nil, fmt.Errorf("%s column: %.60q is not a decimal", t, s)
	}
	shifted := d.Shift(int32(t.Scale()))
	if !shifted.IsInteger() {
		return nil, fmt.Errorf("%s column: %s has more than %d fractional digits", t, s, t.Scale())
	}
	n := decimal128.FromBigInt(shifted.BigInt())
	if !n.FitsInPrecision(int32(t.Precision())) || shifted.BigInt().BitLen() > 126 {
		return nil, fmt.Errorf("%s column: %s has more than %d digits", t, s, t.Precision())
	}
	return n, nil
}

// appendValue appends v (a value convert returns, or one read back by
// readValue) to the builder of its column.
func appendValue(b array.Builder, v any) error {
	if v == nil {
		b.AppendNull()
		return nil
	}
	ok := true
	switch b := b.(type) {
	case *array.Int32Builder:
		x, k := v.(int32)
		ok = k
		b.Append(x)
	case *array.Int64Builder:
		x, k := v.(int64)
		ok = k
		b.Append(x)
	case *array.Float32Builder:
		x, k := v.(float32)
		ok = k
		b.Append(x)
	case *array.Float64Builder:
		x, k := v.(float64)
		ok = k
		b.Append(x)
	case *array.BooleanBuilder:
		x, k := v.(bool)
		ok = k
		b.Append(x)
	case *array.StringBuilder:
		x, k := v.(string)
		ok = k
		b.Append(x)
	case *array.LargeStringBuilder:
		x, k := v.(string)
		ok = k
		b.Append(x)
	case *array.BinaryBuilder:
		x, k := v.([]byte)
		ok = k
		b.Append(x)
	case *array.Decimal128Builder:
		x, k := v.(decimal128.Num)
		ok = k
		b.Append(x)
	case *array.Date32Builder:
		x, k := v.(arrow.Date32)
		ok = k
		b.Append(x)
	case *array.Time64Builder:
		x, k := v.(arrow.Time64)
		ok = k
		b.Append(x)
	case *array.TimestampBuilder:
		x, k := v.(arrow.Timestamp)
		ok = k
		b.Append(x)
	default:
		return fmt.Errorf("no writer for arrow type %s", b.Type())
	}
	if !ok {
		// convert gives each column type its Go type: this is a bug.
		b.AppendNull()
		return fmt.Errorf("a %T value for an arrow %s column", v, b.Type())
	}
	return nil
}

// readValue returns the value at row i of arr in convert's Go types.
func readValue(arr arrow.Array, i int) any {
	if arr.IsNull(i) {
		return nil
	}
	switch a := arr.(type) {
	case *array.Int32:
		return a.Value(i)
	case *array.Int64:
		return a.Value(i)
	case *array.Float32:
		return a.Value(i)
	case *array.Float64:
		return a.Value(i)
	case *array.Boolean:
		return a.Value(i)
	case *array.String:
		return a.Value(i)
	case *array.LargeString:
		return a.Value(i)
	case *array.Binary:
		return bytes.Clone(a.Value(i))
	case *array.LargeBinary:
		return bytes.Clone(a.Value(i))
	case *array.Decimal128:
		return a.Value(i)
	case *array.Date32:
		return a.Value(i)
	case *array.Time64:
		return a.Value(i)
	case *array.Timestamp:
		return a.Value(i)
	}
	return arr.ValueStr(i)
}

// literal is v (convert's Go types) as an Iceberg literal, for a filter
// on a column of type typ.
func literal(v any, typ iceberg.Type) iceberg.Literal {
	switch v := v.(type) {
	case int32:
		return iceberg.NewLiteral(v)
	case int64:
		return iceberg.NewLiteral(v)
	case string:
		return iceberg.NewLiteral(v)
	case []byte:
		return iceberg.NewLiteral(v)
	case bool:
		return iceberg.NewLiteral(v)
	case decimal128.Num:
		scale := 0
		if d, ok := typ.(iceberg.DecimalType); ok {
			scale = d.Scale()
		}
		return iceberg.NewLiteral(iceberg.Decimal{Val: v, Scale: scale})
	case arrow.Date32:
		return iceberg.NewLiteral(iceberg.Date(v))
	case arrow.Time64:
		return iceberg.NewLiteral(iceberg.Time(v))
	case arrow.Timestamp:
		return iceberg.NewLiteral(iceberg.Timestamp(v))
	case float32:
		return iceberg.NewLiteral(v)
	case float64:
		return iceberg.NewLiteral(v)
	}
	return iceberg.NewLiteral(fmt.Sprint(v))
}

// keyOf is the identity of a row's key values (convert's Go types), the
// same for a batch's row and the target row it matches.
func keyOf(vals []any) string {
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(0)
		}
		switch v := v.(type) {
		case []byte:
			b.Write(v)
		case string:
			b.WriteString(v)
		default:
			fmt.Fprint(&b, v)
		}
	}
	return b.String()
}

// plain turns a value of convert's Go types into what ScanRows returns
// for a column of type typ.
func plain(v any, typ iceberg.Type) any {
	switch v := v.(type) {
	case int32:
		return int64(v)
	case float32:
		return float64(v)
	case decimal128.Num:
		scale := 0
		if d, ok := typ.(iceberg.DecimalType); ok {
			scale = d.Scale()
		}
		return v.ToString(int32(scale))
	case arrow.Date32:
		return v.ToTime()
	case arrow.Time64:
		return time.Duration(v) * time.Microsecond
	case arrow.Timestamp:
		return time.UnixMicro(int64(v)).UTC()
	}
	return v
}
