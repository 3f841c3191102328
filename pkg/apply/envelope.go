package apply

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tideline-cdc/tideline/pkg/codec"
)

// field is one member of a row image: the column's name and its raw JSON
// value, both pointing into the record's value (no copies).
type field struct {
	name []byte // unescaped only when the key held escapes
	raw  json.RawMessage
}

// parsed is the part of an envelope a sink reads.
type parsed struct {
	op     string
	before []field
	after  []field
	hasB   bool // before was an object (not null or absent)
	hasA   bool
	tsMs   int64
	txID   []byte // source.txId (PostgreSQL) or source.gtid (MySQL), unquoted; nil when null
}

var errSyntax = errors.New("invalid JSON")

// parseEnvelope reads the envelope's op, before, after, source.ts_ms and
// the source's transaction id in
// one pass without building maps: decoding with encoding/json into maps
// cost more than a third of a sink's CPU. Each byte is read once: the row
// images and the source object are read where they stand, not skipped
// first and read again. Anything that is not a JSON object of the
// expected shape is an error.
func parseEnvelope(b []byte, scratch []field) (parsed, []field, error) {
	var p parsed
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return p, scratch, fmt.Errorf("%w: not an object", errSyntax)
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return p, scratch, fmt.Errorf("%w: an empty object", errSyntax)
	}
	for {
		i = skipWS(b, i)
		key, next, err := readString(b, i)
		if err != nil {
			return p, scratch, err
		}
		i = skipWS(b, next)
		if i >= len(b) || b[i] != ':' {
			return p, scratch, fmt.Errorf("%w: want ':' at %d", errSyntax, i)
		}
		i = skipWS(b, i+1)
		switch string(key) {
		case "op":
			var op []byte
			if op, i, err = readString(b, i); err != nil {
				return p, scratch, fmt.Errorf("op: %w", err)
			}
			p.op = string(op)
		case "before":
			n := len(scratch)
			if scratch, p.hasB, i, err = readRow(b, i, scratch); err != nil {
				return p, scratch, fmt.Errorf("before: %w", err)
			}
			p.before = scratch[n:len(scratch):len(scratch)]
		case "after":
			n := len(scratch)
			if scratch, p.hasA, i, err = readRow(b, i, scratch); err != nil {
				return p, scratch, fmt.Errorf("after: %w", err)
			}
			p.after = scratch[n:len(scratch):len(scratch)]
		case "source":
			if p.tsMs, p.txID, i, err = readSource(b, i); err != nil {
				return p, scratch, fmt.Errorf("source: %w", err)
			}
		default:
			if i, err = skipValue(b, i); err != nil {
				return p, scratch, err
			}
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i++
			continue
		}
		if i < len(b) && b[i] == '}' {
			i++
			break
		}
		return p, scratch, fmt.Errorf("%w: want ',' or '}' at %d", errSyntax, i)
	}
	if skipWS(b, i) != len(b) {
		return p, scratch, fmt.Errorf("%w: trailing data", errSyntax)
	}
	return p, scratch, nil
}

// isNull reports whether the value at b[i] is null, and the index after it.
func isNull(b []byte, i int) (bool, int) {
	if !bytes.HasPrefix(b[i:], []byte("null")) {
		return false, i
	}
	if j := i + 4; j == len(b) || delimiter(b[j]) {
		return true, j
	}
	return false, i
}

// delimiter reports whether c ends a scalar.
func delimiter(c byte) bool {
	return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\t' || c == '\r'
}

// readRow appends the members of the object at b[i] to dst and returns
// the index after it; the value may be null.
func readRow(b []byte, i int, dst []field) ([]field, bool, int, error) {
	if null, j := isNull(b, i); null {
		return dst, false, j, nil
	}
	if i >= len(b) || b[i] != '{' {
		return dst, false, i, fmt.Errorf("%w: a row image is an object or null", errSyntax)
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return dst, true, i + 1, nil
	}
	for {
		i = skipWS(b, i)
		key, next, err := readString(b, i)
		if err != nil {
			return dst, false, i, err
		}
		i = skipWS(b, next)
		if i >= len(b) || b[i] != ':' {
			return dst, false, i, fmt.Errorf("%w: want ':'", errSyntax)
		}
		i = skipWS(b, i+1)
		start := i
		if i, err = skipValue(b, i); err != nil {
			return dst, false, i, err
		}
		dst = append(dst, field{name: key, raw: json.RawMessage(b[start:i])})
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i++
			continue
		}
		if i < len(b) && b[i] == '}' {
			return dst, true, i + 1, nil
		}
		return dst, false, i, fmt.Errorf("%w: want ',' or '}'", errSyntax)
	}
}

// readSource finds ts_ms and the transaction id (txId, or gtid for
// MySQL) in the source object at b[i], without collecting its members: 0
// and nil when absent or null. A string id is returned without its
// quotes. It returns the index after the object.
func readSource(b []byte, i int) (ts int64, txID []byte, end int, err error) {
	if null, j := isNull(b, i); null {
		return 0, nil, j, nil
	}
	if i >= len(b) || b[i] != '{' {
		return 0, nil, i, fmt.Errorf("%w: want an object", errSyntax)
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return 0, nil, i + 1, nil
	}
	for {
		key, next, err := readString(b, skipWS(b, i))
		if err != nil {
			return 0, nil, i, err
		}
		i = skipWS(b, next)
		if i >= len(b) || b[i] != ':' {
			return 0, nil, i, fmt.Errorf("%w: want ':'", errSyntax)
		}
		i = skipWS(b, i+1)
		start := i
		if i, err = skipValue(b, i); err != nil {
			return 0, nil, i, err
		}
		switch val := b[start:i]; string(key) {
		case "ts_ms":
			var ok bool
			if ts, ok = codec.ParseInt(val); !ok {
				return 0, nil, i, fmt.Errorf("ts_ms %s: %w", val, errSyntax)
			}
		case "txId", "gtid":
			switch {
			case string(val) == "null":
			case val[0] == '"':
				if txID, _, err = readString(val, 0); err != nil {
					return 0, nil, i, fmt.Errorf("%s: %w", key, err)
				}
			default:
				txID = val
			}
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i++
			continue
		}
		if i < len(b) && b[i] == '}' {
			return ts, txID, i + 1, nil
		}
		return 0, nil, i, fmt.Errorf("%w: want ',' or '}'", errSyntax)
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// readString reads the string at b[i] and returns its content (unescaped
// if it had escapes) and the index after it.
func readString(b []byte, i int) ([]byte, int, error) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, fmt.Errorf("%w: want a string at %d", errSyntax, i)
	}
	start := i + 1
	// Most strings hold no escape. Short ones (names, most values) are
	// read byte by byte; a long one's closing quote is found with
	// bytes.IndexByte, which pays off past a few dozen bytes.
	j := start
	for end := min(start+32, len(b)); j < end; j++ {
		switch b[j] {
		case '"':
			return b[start:j], j + 1, nil
		case '\\':
			return readEscaped(b, i)
		}
	}
	if q := bytes.IndexByte(b[j:], '"'); q >= 0 && bytes.IndexByte(b[j:j+q], '\\') < 0 {
		return b[start : j+q], j + q + 1, nil
	}
	return readEscaped(b, i)
}

// readEscaped is readString for a string that holds escapes (or is
// unterminated).
func readEscaped(b []byte, i int) ([]byte, int, error) {
	start := i + 1
	escaped := false
	for j := start; j < len(b); j++ {
		switch b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			if !escaped {
				return b[start:j], j + 1, nil
			}
			var s string
			if err := json.Unmarshal(b[i:j+1], &s); err != nil {
				return nil, j + 1, fmt.Errorf("%w: %v", errSyntax, err)
			}
			return []byte(s), j + 1, nil
		}
	}
	return nil, len(b), fmt.Errorf("%w: unterminated string", errSyntax)
}

// skipValue returns the index after the JSON value at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return i, fmt.Errorf("%w: want a value", errSyntax)
	}
	switch c := b[i]; {
	case c == '"':
		_, j, err := readString(b, i)
		return j, err
	case c == '{' || c == '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				_, next, err := readString(b, j)
				if err != nil {
					return next, err
				}
				j = next - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return len(b), fmt.Errorf("%w: unterminated %c", errSyntax, c)
	default:
		j := i
		for j < len(b) && !delimiter(b[j]) {
			j++
		}
		if j == i {
			return j, fmt.Errorf("%w: want a value at %d", errSyntax, i)
		}
		if !scalar(b[i:j]) {
			return j, fmt.Errorf("%w: %q is not a JSON value", errSyntax, b[i:j])
		}
		return j, nil
	}
}

// scalar reports whether s is a JSON number, true, false or null.
func scalar(s []byte) bool {
	switch string(s) {
	case "true", "false", "null":
		return true
	}
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(s) && s[i] == '0' {
		i++
	} else if digits() == 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}
