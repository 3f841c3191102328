package codec

import (
	"encoding/json"
	"unicode/utf8"
)

// JSONString returns the content of the JSON string raw (a value as the
// envelope holds it), without json.Unmarshal for the common case of a
// string with no escapes.
func JSONString(raw []byte) (string, error) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && plainJSON(raw[1:n-1]) {
		return string(raw[1 : n-1]), nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return v, nil
}

// AppendJSONString is JSONString appending the content to dst.
func AppendJSONString(dst, raw []byte) ([]byte, error) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && plainJSON(raw[1:n-1]) {
		return append(dst, raw[1:n-1]...), nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return dst, err
	}
	return append(dst, v...), nil
}

// plainJSON reports whether s, the inside of a JSON string, is its own
// content: no escape, no quote or control character (invalid unescaped)
// and valid UTF-8 (json.Unmarshal replaces invalid bytes with U+FFFD).
func plainJSON(s []byte) bool {
	ascii := true
	for _, c := range s {
		if c == '\\' || c == '"' || c < 0x20 {
			return false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	return ascii || utf8.Valid(s)
}
