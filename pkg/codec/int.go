package codec

import "strconv"

// ParseInt is strconv.ParseInt(string(s), 10, 64), reporting success,
// without converting s to a string for the common case: an optional minus
// and up to 18 digits. A JSON number has no leading '+': up to 18 digits,
// one is refused.
func ParseInt(s []byte) (int64, bool) {
	d := s
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 18 {
		n, err := strconv.ParseInt(string(s), 10, 64)
		return n, err == nil
	}
	var n int64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if len(s) > len(d) {
		n = -n
	}
	return n, true
}
