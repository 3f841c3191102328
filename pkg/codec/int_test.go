package codec

import (
	"strconv"
	"testing"
)

// TestParseInt compares ParseInt with strconv.ParseInt, on both sides of
// its 18-digit fast path.
func TestParseInt(t *testing.T) {
	for _, s := range []string{"0", "7", "-7", "123456789012345678", "-123456789012345678",
		"1234567890123456789", "-9223372036854775808", "9223372036854775808", "", "-", "1e3", "12a", " 1"} {
		got, ok := ParseInt([]byte(s))
		want, err := strconv.ParseInt(s, 10, 64)
		if ok != (err == nil) || (ok && got != want) {
			t.Errorf("ParseInt(%q) = %d, %v; strconv gives %d, %v", s, got, ok, want, err)
		}
	}
}
