package mysql

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// The schema history records the shape of each captured table as of the
// binlog position where it took effect: when Tideline restarts from an
// older position, rows written before a DDL decode with the columns they
// were written with. It is kept in the offsets topic, one value per
// pipeline.
//
// Shapes are read from information_schema when a DDL is first seen, so a
// history is exact as long as Tideline sees each DDL while it is the
// latest one (not when several DDLs of one table happened while it was
// down: see the README).
type history struct {
	Entries []historyEntry `json:"entries"`
}

type historyEntry struct {
	File    string       `json:"file"`
	Pos     uint32       `json:"pos"`
	Table   string       `json:"table"`
	Columns []columnSpec `json:"columns,omitempty"`
	Dropped bool         `json:"dropped,omitempty"`
}

// columnSpec is what newColumn needs, in serialisable form.
type columnSpec struct {
	Name     string `json:"name"`
	DataType string `json:"data_type"`
	ColType  string `json:"column_type"`
	Charset  string `json:"charset,omitempty"`
	Key      bool   `json:"key,omitempty"`
}

func (s *Source) historyKey() string { return "mysql/" + s.cfg.Name + "/schema" }

func (s *Source) loadHistory(ctx context.Context) (*history, error) {
	raw, err := s.store.Load(ctx, s.historyKey())
	if err != nil {
		return nil, fmt.Errorf("load schema history: %w", err)
	}
	h := &history{}
	if raw != nil {
		if err := json.Unmarshal(raw, h); err != nil {
			return nil, fmt.Errorf("schema history %s is corrupt: %w", s.historyKey(), err)
		}
	}
	return h, nil
}

func (s *Source) saveHistory(ctx context.Context, h *history) error {
	raw, _ := json.Marshal(h)
	if err := s.store.Save(ctx, s.historyKey(), raw); err != nil {
		return fmt.Errorf("save schema history: %w", err)
	}
	return nil
}

// before reports whether binlog position (f1, p1) comes before (f2, p2):
// files compare by their numeric suffix (binlog.000012).
func before(f1 string, p1 uint32, f2 string, p2 uint32) bool {
	n1, n2 := fileSeq(f1), fileSeq(f2)
	if n1 != n2 {
		return n1 < n2
	}
	return p1 < p2
}

func fileSeq(f string) int64 {
	i := strings.LastIndexByte(f, '.')
	n, _ := strconv.ParseInt(f[i+1:], 10, 64)
	return n
}

// at returns the entry of table in effect at (file, pos): the last one at
// or before it.
func (h *history) at(table, file string, pos uint32) (historyEntry, bool) {
	var best historyEntry
	found := false
	for _, e := range h.Entries {
		if e.Table != table || before(file, pos, e.File, e.Pos) {
			continue
		}
		if !found || !before(e.File, e.Pos, best.File, best.Pos) {
			best, found = e, true
		}
	}
	return best, found
}

// exact returns the entry recorded for table at exactly (file, pos).
func (h *history) exact(table, file string, pos uint32) (historyEntry, bool) {
	for _, e := range h.Entries {
		if e.Table == table && e.File == file && e.Pos == pos {
			return e, true
		}
	}
	return historyEntry{}, false
}

func entryOf(tab *table, file string, pos uint32) historyEntry {
	e := historyEntry{File: file, Pos: pos, Table: tab.name}
	for _, c := range tab.cols {
		e.Columns = append(e.Columns, columnSpec{Name: c.name, DataType: c.dataType, ColType: c.colType, Charset: c.charset, Key: c.key})
	}
	return e
}

func tableOf(e historyEntry, prefix string) *table {
	db, t, _ := strings.Cut(e.Table, ".")
	tab := &table{name: e.Table, t: &change.Table{Database: db, Name: t, Topic: prefix + "." + db + "." + t}}
	for _, s := range e.Columns {
		c := newColumn(s.Name, s.DataType, s.ColType, s.Charset, s.Key)
		tab.cols = append(tab.cols, c)
		tab.t.Columns = append(tab.t.Columns, change.Column{Name: s.Name, Type: s.ColType, Key: s.Key})
		tab.t.HasKey = tab.t.HasKey || s.Key
	}
	return tab
}

// shapesAt returns each table's shape at start: from the history when it
// has one, else the current shape, which it adds to the history.
func (s *Source) shapesAt(conn *client.Conn, h *history, tables []string, start position) (map[string]*table, error) {
	out := map[string]*table{}
	for _, name := range tables {
		if e, ok := h.at(name, start.File, start.Pos); ok && !e.Dropped {
			out[name] = tableOf(e, s.cfg.TopicPrefix)
			continue
		}
		tab, err := loadTable(conn, name, s.cfg.TopicPrefix)
		if err != nil {
			return nil, err
		}
		out[name] = tab
		h.Entries = append(h.Entries, entryOf(tab, start.File, start.Pos))
	}
	return out, nil
}
