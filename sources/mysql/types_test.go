package mysql

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/shopspring/decimal"
)

func TestAppendValue(t *testing.T) {
	col := func(dt, ct, cs string) *column { c := newColumn("c", dt, ct, cs, false); return &c }
	cases := []struct {
		c    *column
		v    any
		want string
	}{
		{col("tinyint", "tinyint(3) unsigned", ""), int8(-1), "255"},
		{col("smallint", "smallint(5) unsigned", ""), int16(-2), "65534"},
		{col("mediumint", "mediumint(8) unsigned", ""), int32(-1), "16777215"},
		{col("int", "int(10) unsigned", ""), int32(-1), "4294967295"},
		{col("bigint", "bigint(20) unsigned", ""), int64(-1), "18446744073709551615"},
		{col("bigint", "bigint(20) unsigned", ""), uint64(18446744073709551615), "18446744073709551615"},
		{col("int", "int(11)", ""), int32(-5), "-5"},
		{col("int", "int(11)", ""), []byte("-5"), "-5"},
		{col("decimal", "decimal(10,2)", ""), decimal.RequireFromString("-12.50"), `"-12.50"`},
		{col("decimal", "decimal(10,0) unsigned", ""), decimal.RequireFromString("7"), `"7"`},
		{col("decimal", "decimal(30,10)", ""), decimal.RequireFromString("1.5"), `"1.5000000000"`},
		{col("decimal", "decimal(10,2)", ""), []byte("-12.50"), `"-12.50"`},
		{col("double", "double", ""), float64(0.1), "0.1"},
		{col("float", "float", ""), float32(0.1), "0.1"},
		{col("varchar", "varchar(10)", "utf8mb4"), "a\"b", `"a\"b"`},
		{col("varbinary", "varbinary(4)", ""), "\x00\xff", `"AP8="`},
		{col("blob", "blob", ""), []byte{1, 2}, `"AQI="`},
		{col("date", "date", ""), "1970-01-02", "1"},
		{col("date", "date", ""), "0000-00-00", "null"},
		{col("datetime", "datetime(6)", ""), "1970-01-01 00:00:01.5", "1500000"},
		{col("datetime", "datetime", ""), "0000-00-00 00:00:00", "null"},
		{col("timestamp", "timestamp(3)", ""), "2026-11-22 11:14:15.25", `"2026-11-22T11:14:15.250000Z"`},
		{col("time", "time(6)", ""), "-838:59:59.000000", "-3020399000000"},
		{col("time", "time", ""), "01:00:00", "3600000000"},
		{col("year", "year(4)", ""), 2026, "2026"},
		{col("enum", "enum('a','it''s')", "utf8mb4"), int64(2), `"it's"`},
		{col("enum", "enum('a','b')", "utf8mb4"), int64(0), `""`},
		{col("enum", "enum('a','b')", "utf8mb4"), []byte("b"), `"b"`},
		{col("set", "set('x','y','z')", "utf8mb4"), int64(5), `"x,z"`},
		{col("set", "set('x','y','z')", "utf8mb4"), int64(0), `""`},
		{col("bit", "bit(16)", ""), int64(258), "258"},
		{col("bit", "bit(16)", ""), []byte{1, 2}, "258"},
		{col("json", "json", ""), []byte(`{"a":1}`), `"{\"a\":1}"`},
		{col("char", "char(5)", "latin1"), "caf\xe9", `"café"`},
	}
	for _, c := range cases {
		got, err := appendValue(nil, c.c, c.v, true)
		if err != nil {
			t.Errorf("%s %v: %v", c.c.colType, c.v, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("%s %#v -> %s, want %s", c.c.colType, c.v, got, c.want)
		}
		if !json.Valid(got) {
			t.Errorf("%s %#v -> %s is not JSON", c.c.colType, c.v, got)
		}
	}
	for _, bad := range []struct {
		c *column
		v any
	}{{col("int", "int", ""), "x1"}, {col("date", "date", ""), "22/11/2026"}, {col("enum", "enum('a')", ""), int64(3)}, {col("time", "time", ""), "1:2"}} {
		if got, err := appendValue(nil, bad.c, bad.v, true); err == nil {
			t.Errorf("%s %#v accepted as %s", bad.c.colType, bad.v, got)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got := fmt.Sprint(parseLabels("enum('a','b,c','it''s','')"))
	if want := "[a b,c it's ]"; got != want {
		t.Errorf("parseLabels = %s, want %s", got, want)
	}
}

func TestBinlogOrder(t *testing.T) {
	if !before("binlog.000009", 900, "binlog.000010", 4) || before("binlog.000010", 4, "binlog.000009", 900) || !before("b.000001", 4, "b.000001", 5) {
		t.Error("binlog positions compare by file sequence, then offset")
	}
	h := &history{Entries: []historyEntry{
		{File: "b.000001", Pos: 100, Table: "d.t", Columns: []columnSpec{{Name: "a"}}},
		{File: "b.000002", Pos: 50, Table: "d.t", Columns: []columnSpec{{Name: "a"}, {Name: "b"}}},
	}}
	if e, ok := h.at("d.t", "b.000001", 999); !ok || len(e.Columns) != 1 {
		t.Errorf("at before the second DDL: %+v %v", e, ok)
	}
	if e, ok := h.at("d.t", "b.000002", 50); !ok || len(e.Columns) != 2 {
		t.Errorf("at the second DDL: %+v %v", e, ok)
	}
	if _, ok := h.at("d.t", "b.000001", 99); ok {
		t.Error("at before any entry found one")
	}
}
