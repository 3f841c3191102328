package codec

import (
	"encoding/json"
	"testing"
)

// TestJSONString checks that the shortcut for strings without escapes
// gives what json.Unmarshal gives, errors included, for JSONString and
// AppendJSONString.
func TestJSONString(t *testing.T) {
	for _, raw := range []string{
		`""`, `"abc"`, `"héllo 😀"`, `"a\"b"`, `"a\\b"`, `"\u00e9\n"`, `"{\"a\": [1]}"`,
		"\"\xff\xfe\"",  // invalid UTF-8: json.Unmarshal replaces it
		"\"a\tb\"",      // a raw control character: json.Unmarshal refuses it
		`"a"b"`, `"abc`, // not one JSON string
	} {
		var want string
		werr := json.Unmarshal([]byte(raw), &want)
		got, err := JSONString([]byte(raw))
		if got != want || (err == nil) != (werr == nil) {
			t.Errorf("JSONString(%q) = %q, %v; json.Unmarshal gives %q, %v", raw, got, err, want, werr)
		}
		app, err := AppendJSONString([]byte("x:"), []byte(raw))
		if werr == nil && (err != nil || string(app) != "x:"+want) {
			t.Errorf("AppendJSONString(x:, %q) = %q, %v; want %q", raw, app, err, "x:"+want)
		}
		if werr != nil && err == nil {
			t.Errorf("AppendJSONString(%q) accepted what json.Unmarshal refuses", raw)
		}
	}
}
