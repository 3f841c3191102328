package change

import "testing"

func TestPrecision(t *testing.T) {
	for typ, want := range map[string][3]int{
		"numeric(10,2)": {10, 2, 1}, "decimal(30, 10) unsigned": {30, 10, 1}, "numeric(7)": {7, 0, 1},
		"numeric": {0, 0, 0}, "varchar(x)": {0, 0, 0}, "numeric(0,0)": {0, 0, 0}, "bad)(": {0, 0, 0},
	} {
		p, s, ok := Precision(typ)
		if p != want[0] || s != want[1] || ok != (want[2] == 1) {
			t.Errorf("Precision(%q) = %d, %d, %v; want %v", typ, p, s, ok, want)
		}
	}
}
