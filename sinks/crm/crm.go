// Package crm holds what the CRM sinks (sinks/crm/hubspot,
// sinks/crm/salesforce, sinks/crm/webhook) share: the declarative mapping
// of source rows to CRM records (Mapping, compiled from expr expressions
// with Tideline's transforms), the HTTP client that keeps under a rate
// limit and retries transient failures (Client), and the bookkeeping that
// turns per-record API results into the apply runtime's errors (Pass).
//
// The guarantees, for every CRM sink:
//
//   - Per-key order: the runtime folds a batch per key and applies a
//     batch fully before the next, so a key's changes reach the CRM in
//     order. Two source rows that map to the same CRM id in one batch are
//     sent once, the newer change winning (as it would across batches).
//   - Idempotence: records are upserted by the id property and deleted
//     by id, so applying a batch again sends the same final values.
//     Within a retry streak, rows the CRM already accepted are not sent
//     again (Pass remembers their outcome). The CRM holds no source
//     position, so a replay of an older batch after a crash sends older
//     values until the newer batches are replayed too (they always are:
//     offsets are committed only after a batch is applied).
//   - Failures: a transient failure (network, timeout, 429, 5xx) is
//     retried by the Client, then returned as a plain error (the runtime
//     retries the batch without limit). A record the CRM rejects, or a
//     row the mapping cannot map (an invalid phone number for e164), is an
//     *apply.RowError carrying the API's message: it goes to the
//     dead-letter topic.
package crm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Record is one CRM record to write, mapped from a row of a batch.
type Record struct {
	// Row is the row's index in the batch.
	Row int
	// Delete is set for a deleted row (archive or delete, per on_delete).
	Delete bool
	// ID is the id property's value.
	ID string
	// Props are the mapped properties, the id property included; nil for
	// a delete.
	Props map[string]any
	// Order is the row's change position, for the webhook's payload.
	Order []byte
}

// Engine maps batches to records for one sink and remembers, across the
// runtime's retries of a batch, which rows are settled. The runtime calls
// a sink from one goroutine; Engine is safe for concurrent use anyway
// (Preview may run beside Apply).
type Engine struct {
	name string
	cfg  MappingConfig

	mu     sync.Mutex
	shapes map[string]*Mapping
	// memo holds the outcome of every row sent or rejected since the
	// last Apply that returned nil: nil for applied, the error for
	// rejected. The runtime answers a *apply.RowError by applying the
	// batch again without that row, and a plain error by applying it
	// again whole: the rows already settled are not sent twice, and the
	// other rejected rows are reported at once, one per call, without a
	// request.
	memo map[string]error
	// ids is, per source key, the id last upserted: a delete carries only
	// the key columns, so a mapping whose id reads other columns finds a
	// deleted row's record here.
	ids map[string]string
}

// maxMemo bounds the memo and the id cache: past it they are cleared
// (the memo only saves requests; the id cache's loss sends later deletes
// of those keys to the dead-letter topic, with the reason).
const maxMemo = 1 << 20

// NewEngine returns an engine for sink name's mapping. The mapping is
// compiled per table shape on first use.
func NewEngine(name string, cfg MappingConfig) *Engine {
	if cfg.OnDelete == "" {
		cfg.OnDelete = Archive
	}
	return &Engine{name: name, cfg: cfg, shapes: map[string]*Mapping{}, memo: map[string]error{}, ids: map[string]string{}}
}

// Config is the engine's mapping settings.
func (e *Engine) Config() MappingConfig { return e.cfg }

// Mapping returns the mapping compiled for t, compiling it on first use.
func (e *Engine) Mapping(t *change.Table) (*Mapping, error) {
	sig := shapeKey(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	if m, ok := e.shapes[sig]; ok {
		return m, nil
	}
	m, err := Compile(e.cfg, t)
	if err != nil {
		return nil, fmt.Errorf("sink %s: mapping of %s: %w", e.name, t.Label(), err)
	}
	e.shapes[sig] = m
	return m, nil
}

func shapeKey(t *change.Table) string {
	var b strings.Builder
	b.WriteString(t.Label())
	for _, c := range t.Columns {
		b.WriteByte(0)
		b.WriteString(c.Name)
		b.WriteByte(1)
		b.WriteString(string(c.Logical))
		if c.Key {
			b.WriteByte(2)
		}
	}
	return b.String()
}

// Pass is one Apply of a batch: the records to send, and the outcome of
// each row as the sink learns it.
type Pass struct {
	e  *Engine
	tb *apply.TableBatch
	// Mapping is the batch's compiled mapping.
	Mapping *Mapping
	// Upserts and Deletes are the records to send, in row order.
	Upserts, Deletes []Record

	settled   map[int]error // row -> nil (applied, filtered, superseded) or its rejection
	transient error
}

// Begin maps tb. A mapping that does not compile for tb's table (a column
// it reads was dropped at the source) is returned as a plain error: the
// sink stops on it, retrying, until the configuration is fixed; nothing
// is skipped.
func (e *Engine) Begin(tb *apply.TableBatch) (*Pass, error) {
	m, err := e.Mapping(tb.Table)
	if err != nil {
		return nil, err
	}
	p := &Pass{e: e, tb: tb, Mapping: m, settled: map[int]error{}}
	e.mu.Lock()
	defer e.mu.Unlock()
	// byID finds two rows mapped to the same record: the newer change
	// wins, the other is settled (superseded).
	byID := map[string]*Record{}
	var recs []*Record
	for i := range tb.Rows {
		row := &tb.Rows[i]
		if out, ok := e.memo[e.rowKey(tb, row)]; ok {
			p.settled[i] = out
			continue
		}
		props, id, keep, err := m.Apply(*row)
		if err != nil && row.Op == change.OpDelete && m.DeletesNeedCache() {
			if cached, ok := e.ids[e.sourceKey(tb, row)]; ok {
				id, keep, err = cached, true, nil
			} else {
				err = fmt.Errorf("%w (this delete carries only the key columns; the id property %s reads other columns, and this sink has not sent key %s since it started, so it cannot tell which record to %s: "+
					"give the source table REPLICA IDENTITY FULL (PostgreSQL) so that deletes carry the whole row)",
					err, e.cfg.IDProperty, row.Key, e.cfg.OnDelete)
			}
		}
		switch {
		case err != nil:
			p.settled[i] = err
			continue
		case !keep:
			p.settled[i] = nil
			continue
		}
		r := &Record{Row: i, Delete: row.Op == change.OpDelete, ID: id, Props: props, Order: row.Order}
		if old, ok := byID[id]; ok {
			if bytes.Compare(tb.Rows[old.Row].Order, row.Order) > 0 {
				p.settled[i] = nil
				continue
			}
			p.settled[old.Row] = nil
			*old = *r
			continue
		}
		byID[id] = r
		recs = append(recs, r)
	}
	sort.Slice(recs, func(a, b int) bool { return recs[a].Row < recs[b].Row })
	for _, r := range recs {
		if _, ok := p.settled[r.Row]; ok {
			continue // superseded by a newer row, which took its slot
		}
		if r.Delete {
			p.Deletes = append(p.Deletes, *r)
		} else {
			p.Upserts = append(p.Upserts, *r)
		}
	}
	return p, nil
}

// Batch is the table batch the pass applies.
func (p *Pass) Batch() *apply.TableBatch { return p.tb }

// Done records that the CRM applied row.
func (p *Pass) Done(row int) { p.settled[row] = nil }

// Reject records that the CRM refused row for good: it goes to the
// dead-letter topic with err.
func (p *Pass) Reject(row int, err error) { p.settled[row] = err }

// Fail records a transient failure: the rows not settled are sent again
// when the runtime retries the batch.
func (p *Pass) Fail(err error) {
	if p.transient == nil {
		p.transient = err
	}
}

// Failed reports whether the pass met a transient failure (the sink then
// stops sending).
func (p *Pass) Failed() bool { return p.transient != nil }

// Finish remembers the outcomes and returns Apply's error: the first
// rejected row as an *apply.RowError, else the transient failure, else
// nil.
func (p *Pass) Finish() error {
	e := p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.memo) > maxMemo {
		clear(e.memo)
	}
	if len(e.ids) > maxMemo {
		clear(e.ids)
	}
	var rejected []*apply.RowError
	for i, err := range p.settled {
		row := &p.tb.Rows[i]
		e.memo[e.rowKey(p.tb, row)] = err
		if err != nil {
			rejected = append(rejected, &apply.RowError{Index: i, Err: err})
		}
	}
	if p.Mapping.DeletesNeedCache() {
		// A deleted key keeps its id: a replay of the delete finds the
		// record gone, harmlessly. A row the filter leaves out keeps it
		// too: its record stays in the CRM until the row is deleted.
		for _, r := range p.Upserts {
			if err, ok := p.settled[r.Row]; ok && err == nil {
				e.ids[e.sourceKey(p.tb, &p.tb.Rows[r.Row])] = r.ID
			}
		}
	}
	if len(rejected) > 0 {
		return rowErrors(rejected)
	}
	if p.transient != nil {
		return p.transient
	}
	clear(e.memo) // the batch is through: nothing is retried
	return nil
}

// rowErrors reports rejected rows to the runtime. apply.RowError names one
// row; the runtime drops it and applies the rest again, and the memo
// answers the next rejected row at once, so k rejected rows cost k cheap
// calls, not k requests.
func rowErrors(errs []*apply.RowError) error {
	sort.Slice(errs, func(a, b int) bool { return errs[a].Index < errs[b].Index })
	return apply.RowErrors(errs)
}

// rowKey identifies one change of one row across the runtime's retries.
func (e *Engine) rowKey(tb *apply.TableBatch, row *apply.Row) string {
	return tb.Topic + "\x00" + string(row.Key) + "\x00" + string(row.Order)
}

// sourceKey identifies a source row (its key).
func (e *Engine) sourceKey(tb *apply.TableBatch, row *apply.Row) string {
	return tb.Topic + "\x00" + string(row.Key)
}

// Chunks splits records into groups of at most n.
func Chunks(recs []Record, n int) [][]Record {
	var out [][]Record
	for len(recs) > 0 {
		k := min(n, len(recs))
		out = append(out, recs[:k])
		recs = recs[k:]
	}
	return out
}

// Rows turns rows given as column -> value maps (values as docs/types.md
// renders them, or json.RawMessage) into snapshot rows of t, for Preview.
// A column a map lacks is absent (the property is left out).
func Rows(t *change.Table, maps []map[string]any) ([]apply.Row, error) {
	rows := make([]apply.Row, 0, len(maps))
	for n, m := range maps {
		row := apply.Row{Op: change.OpRead, Values: make([]json.RawMessage, len(t.Columns)), Order: []byte(fmt.Sprintf("preview-%020d", n))}
		key := map[string]json.RawMessage{}
		for i, c := range t.Columns {
			v, ok := m[c.Name]
			if !ok {
				continue
			}
			raw, ok := v.(json.RawMessage)
			if !ok {
				b, err := json.Marshal(v)
				if err != nil {
					return nil, fmt.Errorf("row %d: column %s: %w", n, c.Name, err)
				}
				raw = b
			}
			row.Values[i] = raw
			if c.Key {
				key[c.Name] = raw
			}
		}
		if len(key) > 0 {
			row.Key, _ = json.Marshal(key)
		} else {
			row.Key = []byte(strconv.Itoa(n))
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// Redacted returns h without the headers that carry credentials.
func Redacted(h map[string][]string) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		switch strings.ToLower(k) {
		case "authorization", "cookie", "x-api-key":
			continue
		}
		out[k] = v
	}
	return out
}
