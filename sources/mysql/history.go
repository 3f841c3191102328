package mysql

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tideline-cdc/tideline/pkg/codec"
)

// The schema history records the shape of each captured table as of the
// binlog position where it took effect: when Tideline restarts from an
// older position, rows written before a DDL decode with the columns they
// were written with. It is kept in the offsets topic, one value per
// pipeline.
//
// A table's first shape is read from information_schema (at the snapshot,
// under its lock, or at the first start); every later shape comes from
// applying the DDL statements of the binlog in order (ddl.go), so the
// history is exact however many DDLs happened while Tideline was down.
type history struct {
	Entries []historyEntry `json:"entries"`
	// dirty says Entries changed since they were loaded or last saved.
	dirty bool
}

type historyEntry struct {
	File    string       `json:"file"`
	Pos     uint32       `json:"pos"`
	Table   string       `json:"table"`
	Charset string       `json:"charset,omitempty"`
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

// saveHistory stores h when it changed since it was loaded or last saved.
func (s *Source) saveHistory(ctx context.Context, h *history) error {
	if !h.dirty {
		return nil
	}
	raw, _ := json.Marshal(h)
	if err := s.store.Save(ctx, s.historyKey(), raw); err != nil {
		return fmt.Errorf("save schema history: %w", err)
	}
	h.dirty = false
	return nil
}

// before reports whether binlog position (f1, p1) comes before (f2, p2):
// files compare by their numeric suffix (binlog.000012).
func before(f1 string, p1 uint32, f2 string, p2 uint32) bool {
	n1, n2 := codec.BinlogSeq(f1), codec.BinlogSeq(f2)
	if n1 != n2 {
		return n1 < n2
	}
	return p1 < p2
}

// inEffect returns, per table, the index in Entries of its entry in
// effect at (file, pos): the last one at or before it (of two at one
// position, the later in Entries). A table with no entry there is absent.
func (h *history) inEffect(file string, pos uint32) map[string]int {
	out := map[string]int{}
	for i, e := range h.Entries {
		if before(file, pos, e.File, e.Pos) {
			continue
		}
		if j, ok := out[e.Table]; !ok || !before(e.File, e.Pos, h.Entries[j].File, h.Entries[j].Pos) {
			out[e.Table] = i
		}
	}
	return out
}

// at returns the entry of table in effect at (file, pos).
func (h *history) at(table, file string, pos uint32) (historyEntry, bool) {
	if i, ok := h.inEffect(file, pos)[table]; ok {
		return h.Entries[i], true
	}
	return historyEntry{}, false
}

// exact returns the entry of table recorded at exactly (file, pos): what
// a statement there did to it, when it was read before (a replay).
func (h *history) exact(table, file string, pos uint32) (historyEntry, bool) {
	for _, e := range h.Entries {
		if e.Table == table && e.File == file && e.Pos == pos {
			return e, true
		}
	}
	return historyEntry{}, false
}

// record adds e, replacing an entry of the same table at the same
// position (a DDL replayed after a restart from before it).
func (h *history) record(e historyEntry) {
	for i := range h.Entries {
		if o := &h.Entries[i]; o.Table == e.Table && o.File == e.File && o.Pos == e.Pos {
			if !o.equal(e) {
				*o, h.dirty = e, true
			}
			return
		}
	}
	h.Entries = append(h.Entries, e)
	h.dirty = true
}

func (e historyEntry) equal(o historyEntry) bool {
	return e.File == o.File && e.Pos == o.Pos && e.Table == o.Table && e.Charset == o.Charset &&
		e.Dropped == o.Dropped && slices.Equal(e.Columns, o.Columns)
}

// prune forgets what no restart can need: Tideline resumes at the stored
// position (floor) or later, so of the entries at or before floor only
// each table's last is kept, and not even that one when it says the
// table was dropped and nothing follows.
func (h *history) prune(floor position) {
	last := h.inEffect(floor.File, floor.Pos)
	later := map[string]bool{}
	for _, e := range h.Entries {
		if before(floor.File, floor.Pos, e.File, e.Pos) {
			later[e.Table] = true
		}
	}
	kept := h.Entries[:0]
	for i, e := range h.Entries {
		if before(floor.File, floor.Pos, e.File, e.Pos) || (last[e.Table] == i && (!e.Dropped || later[e.Table])) {
			kept = append(kept, e)
		}
	}
	if len(kept) < len(h.Entries) {
		h.dirty = true
	}
	clear(h.Entries[len(kept):])
	h.Entries = kept
}

// alive returns the tables, sorted, whose entry in effect at (file, pos)
// does not say they were dropped.
func (h *history) alive(file string, pos uint32) []string {
	var out []string
	for table, i := range h.inEffect(file, pos) {
		if !h.Entries[i].Dropped {
			out = append(out, table)
		}
	}
	slices.Sort(out)
	return out
}

func entryOf(tab *table, file string, pos uint32) historyEntry {
	e := historyEntry{File: file, Pos: pos, Table: tab.name, Charset: tab.charset}
	for _, c := range tab.cols {
		e.Columns = append(e.Columns, columnSpec{Name: c.name, DataType: c.dataType, ColType: c.colType, Charset: c.charset, Key: c.key})
	}
	return e
}

func tableOf(e historyEntry, prefix string) *table {
	tab := &table{name: e.Table, charset: e.Charset}
	for _, s := range e.Columns {
		tab.cols = append(tab.cols, newColumn(s.Name, s.DataType, s.ColType, s.Charset, s.Key))
	}
	tab.build(prefix)
	return tab
}

// shapesAt returns each table's shape at start: from the history when it
// has one, else the current shape, which it adds to the history. (A table
// created after start has its CREATE TABLE replayed, which redefines it.)
func (s *Source) shapesAt(conn *client.Conn, h *history, tables []string, start position) (map[string]*table, error) {
	out := map[string]*table{}
	eff := h.inEffect(start.File, start.Pos)
	for _, name := range tables {
		if i, ok := eff[name]; ok && !h.Entries[i].Dropped {
			out[name] = tableOf(h.Entries[i], s.cfg.TopicPrefix)
			continue
		}
		tab, err := loadTable(conn, name, s.cfg.TopicPrefix)
		if err != nil {
			return nil, err
		}
		out[name] = tab
		h.record(entryOf(tab, start.File, start.Pos))
	}
	return out, nil
}
