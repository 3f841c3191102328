package apply

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/pkg/change"
)

func shape(cols ...string) *change.Table {
	t := &change.Table{Schema: "public", Name: "t", Topic: "p.public.t", HasKey: true}
	for i, c := range cols {
		t.Columns = append(t.Columns, change.Column{Name: c, Logical: change.String, Key: i == 0})
	}
	return t
}

var offset int64

func ev(op change.Op, t *change.Table, order string, partition int32, vals map[string]string) *event {
	offset++
	e := &event{op: op, shape: t, order: []byte(order), rec: &kgo.Record{Topic: t.Topic, Partition: partition, Offset: offset}}
	if op == change.OpTruncate {
		return e
	}
	for _, c := range t.Columns {
		if v, ok := vals[c.Name]; ok {
			e.fields = append(e.fields, field{name: []byte(c.Name), raw: json.RawMessage(v)})
		}
	}
	e.key = []byte(`{"id":` + vals["id"] + `}`)
	return e
}

// render shows a batch as "op key col=val …" lines ("-" for absent).
func render(tb *TableBatch) string {
	var lines []string
	for _, r := range tb.Rows {
		s := fmt.Sprintf("%s %s", r.Op, r.Order)
		for i, c := range tb.Table.Columns {
			v := "-"
			if r.Values[i] != nil {
				v = string(r.Values[i])
			}
			s += " " + c.Name + "=" + v
		}
		lines = append(lines, s+fmt.Sprintf(" (%d records)", len(r.Records)))
	}
	return strings.Join(lines, "\n")
}

func TestFoldKeepsNewestPerKey(t *testing.T) {
	s := shape("id", "a", "big")
	f := newFolder(s.Topic, false, false, 0)
	f.add(ev(change.OpCreate, s, "01", 0, map[string]string{"id": "1", "a": `"x"`, "big": `"B"`}))
	f.add(ev(change.OpUpdate, s, "02", 0, map[string]string{"id": "1", "a": `"y"`, "big": `"` + change.UnavailableMarker + `"`}))
	f.add(ev(change.OpCreate, s, "03", 0, map[string]string{"id": "2", "a": `"z"`, "big": "null"}))
	f.add(ev(change.OpDelete, s, "04", 0, map[string]string{"id": "2", "a": `"z"`, "big": "null"}))
	got := render(f.batch())
	want := `u 02 id=1 a="y" big="B" (2 records)
d 04 id=2 a=- big=- (2 records)`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestFoldTruncateByOrderAcrossPartitions(t *testing.T) {
	s := shape("id", "a")
	f := newFolder(s.Topic, false, false, 0)
	f.add(ev(change.OpCreate, s, "01", 1, map[string]string{"id": "1", "a": `"old"`}))
	f.add(ev(change.OpCreate, s, "05", 2, map[string]string{"id": "2", "a": `"new"`}))
	f.add(ev(change.OpTruncate, s, "03", 0, nil))
	// Arrives after the truncate (another partition) but is older.
	f.add(ev(change.OpCreate, s, "02", 3, map[string]string{"id": "3", "a": `"older"`}))
	tb := f.batch()
	if string(tb.Truncate) != "03" {
		t.Errorf("truncate %s, want 03", tb.Truncate)
	}
	if got := render(tb); got != `c 05 id=2 a="new" (1 records)` {
		t.Errorf("rows after the truncate:\n%s", got)
	}
	if len(tb.Rows) != 1 || len(tb.Rows[0].Records) != 1 || tb.Rows[0].Records[0].Partition != 2 {
		t.Errorf("rows carry records %v, want only the newer create's", tb.Rows)
	}
}

func TestChangeLogKeepsEveryChange(t *testing.T) {
	s := shape("id", "a")
	f := newFolder(s.Topic, true, false, 0)
	f.add(ev(change.OpCreate, s, "01", 0, map[string]string{"id": "1", "a": `"x"`}))
	f.add(ev(change.OpUpdate, s, "02", 0, map[string]string{"id": "1", "a": `"y"`}))
	f.add(ev(change.OpTruncate, s, "03", 1, nil))
	f.add(ev(change.OpDelete, s, "04", 0, map[string]string{"id": "1", "a": `"y"`}))
	tb := f.batch()
	if tb.Truncate != nil {
		t.Errorf("a change log's truncate is a row, not TableBatch.Truncate (%s)", tb.Truncate)
	}
	want := `c 01 id=1 a="x" (1 records)
u 02 id=1 a="y" (1 records)
t 03 id=- a=- (1 records)
d 04 id=1 a="y" (1 records)`
	if got := render(tb); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestBeforeImagesKeepADeletesColumns(t *testing.T) {
	s := shape("id", "a")
	for _, before := range []bool{false, true} {
		f := newFolder(s.Topic, false, before, 0)
		f.add(ev(change.OpDelete, s, "01", 0, map[string]string{"id": "1", "a": `"x"`}))
		want := `d 01 id=1 a=- (1 records)`
		if before {
			want = `d 01 id=1 a="x" (1 records)`
		}
		if got := render(f.batch()); got != want {
			t.Errorf("before images %v: got %s, want %s", before, got, want)
		}
	}
}

func TestFoldUnionOfShapes(t *testing.T) {
	v1 := shape("id", "gone", "a")
	v2 := shape("id", "a", "added")
	f := newFolder(v1.Topic, false, false, 0)
	f.add(ev(change.OpCreate, v1, "01", 0, map[string]string{"id": "1", "gone": `"g"`, "a": `"x"`}))
	f.add(ev(change.OpCreate, v2, "02", 0, map[string]string{"id": "2", "a": `"y"`, "added": `7`}))
	tb := f.batch()
	var names []string
	for _, c := range tb.Table.Columns {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "id,a,added,gone" {
		t.Errorf("columns %v: want the newest shape's, then the dropped one", names)
	}
	want := `c 01 id=1 a="x" added=- gone="g" (1 records)
c 02 id=2 a="y" added=7 gone=- (1 records)`
	if got := render(tb); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestTopicRegexes(t *testing.T) {
	res := TopicRegexes("shop.v1", []string{"public.order*", "*.audit"})
	match := func(topic string) bool {
		for _, r := range res {
			if regexp.MustCompile(r).MatchString(topic) {
				return true
			}
		}
		return false
	}
	for topic, want := range map[string]bool{
		"shop.v1.public.orders": true, "shop.v1.public.order": true, "shop.v1.public.items": false,
		"shop.v1.x.audit": true, "shopXv1.public.orders": false, "shop.v1.public.orders.x": false,
	} {
		if got := match(topic); got != want {
			t.Errorf("%s: match %v, want %v", topic, got, want)
		}
	}
	if all := TopicRegexes("p", nil); len(all) != 1 || !regexp.MustCompile(all[0]).MatchString("p.a.b") {
		t.Errorf("no tables: %v should match every change topic", all)
	}
}
