// Package icebergsink applies change topics to Apache Iceberg tables (the
// sink type "iceberg"), with apache/iceberg-go: one Iceberg table per
// source table, in a SQL catalog (a SQLite file, or PostgreSQL), with the
// warehouse on local disk or S3. The namespace is the source schema (the
// database for MySQL sources) and the table is the source table's name.
//
// Each batch is one Iceberg commit (format v2, merge-on-read): a row delta
// with an equality-delete file on the key columns for the keys it
// replaces or deletes, and a data file with the new row images. An
// equality delete applies only to data files of older sequence numbers,
// so the row written in the same commit stays. A scan of the table is
// the source table. Tables are created with the key columns as the
// schema's identifier fields, and carry metadata columns:
//
//   - _tideline_position: the Order of the change the row reflects.
//   - _tideline_op: the op of that change (c, u, r; d with soft deletes).
//   - _tideline_applied_at: when it was written.
//   - _tideline_deleted: with SoftDelete, true once the row was deleted.
//
// # Exactly once
//
// Every commit records, in its snapshot summary and in the table property
// of the same name, "tideline.offsets": the next Kafka offset of each
// topic/partition whose records it holds ({"topic/0": 42, …}), merged
// with the previous commit's. A row whose Kafka records are all below the
// stored offset of their partition was applied already (the sink
// committed to Iceberg and crashed before the runtime committed to
// Kafka), and is skipped: a replay changes nothing and makes no snapshot.
// The newest truncate applied is kept the same way ("tideline.truncated"),
// so that rows older than it are not written again.
//
// Because a stored offset says "everything below is applied", the sink
// must never let the runtime split a batch and apply its halves as
// separate commits: it reports a bad value as a *apply.RowError (that row
// goes to the dead-letter topic and the rest of the batch is retried
// whole), never as a bare apply.Permanent.
//
// Besides, each batch reads the current rows of its keys (an Iceberg scan
// filtered on the key columns): a change older than the row the table
// holds (by _tideline_position) is ignored, and a change that lacks a
// column's value (an unchanged TOASTed value, or a column the source
// dropped) keeps the current one. The scan reads only the key and
// position columns unless a row needs the others. Hard deletes leave no
// tombstone: an older change of a key deleted in an earlier batch, if it
// came again at a higher Kafka offset (not a replay: a second producer),
// would create the row again; SoftDelete keeps deleted rows, and so
// guards them.
//
// Tables without a key are rejected (apply.Reject: their records go to
// the dead-letter topic): without a key neither updates nor deletes can
// find their row, so the table could not mirror the source.
//
// # Types
//
//	source logical   Iceberg
//	int16, int32     int (int16 values are range-checked)
//	int64            long
//	uint64           decimal(20,0)
//	decimal(p,s)     decimal(p,s) when p <= 38; string otherwise (every digit kept)
//	float32/float64  float/double
//	bool             boolean
//	string           string
//	bytes            binary
//	json, array      string (the JSON text)
//	uuid             string
//	date             date (out-of-range text such as "infinity" is a row error)
//	time             time (microseconds; MySQL TIME outside a day is a row error)
//	timestamp        timestamp (microseconds)
//	timestamptz      timestamptz (microseconds, UTC)
//	timetz, interval string (ISO-8601 text)
//
// A column added at the source is added to the Iceberg schema (optional)
// by the first batch that carries it; a column whose source type widened
// is promoted where Iceberg allows (int to long, float to double, a
// wider decimal); a column dropped at the source stays, and new rows
// leave it null. A value the column cannot take is a *apply.RowError.
//
// Compact rewrites small data files with their deletes applied and
// expires old snapshots.
package icebergsink

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	"github.com/apache/iceberg-go/table"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
)

// Metadata column names.
const (
	colPosition  = "_tideline_position"
	colOp        = "_tideline_op"
	colAppliedAt = "_tideline_applied_at"
	colDeleted   = "_tideline_deleted"
)

// Snapshot summary and table properties.
const (
	propOffsets   = "tideline.offsets"
	propTruncated = "tideline.truncated"
)

// errNoKey is returned for tables without key columns.
var errNoKey = errors.New("the source table has no primary key (or replica identity): the iceberg sink replaces rows by key and cannot apply its changes")

// Sink writes to Iceberg tables. The runtime calls Apply from one goroutine
// at a time.
type Sink struct {
	cfg Config
	log *zap.Logger

	mu     sync.Mutex // guards the fields below against Close
	cat    *sqlcat.Catalog
	db     *sql.DB
	closed bool

	// commits counts commits per table since its last compaction
	// (CompactEvery); only Apply's goroutine uses it.
	commits map[string]int
}

var _ apply.Sink = (*Sink)(nil)

// New returns a sink for cfg. The catalog is opened by the first Apply
// (a catalog database that is down only costs retries), but cfg is
// checked here.
func New(ctx context.Context, cfg Config, log *zap.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink %s: %w", cfg.Name, err)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", cfg.Name, err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Sink{cfg: cfg, log: log.With(zap.String("sink", cfg.Name)), commits: map[string]int{}}, nil
}

// Close implements apply.Sink. It may be called more than once.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cat == nil {
		return nil
	}
	err := errors.Join(s.cat.Close(), s.db.Close())
	s.cat, s.db = nil, nil
	if err != nil {
		return fmt.Errorf("sink %s: close the catalog: %w", s.cfg.Name, err)
	}
	return nil
}

func (s *Sink) catalog(ctx context.Context) (*sqlcat.Catalog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("sink closed")
	}
	if s.cat == nil {
		cat, db, err := openCatalog(ctx, s.cfg)
		if err != nil {
			return nil, err
		}
		s.cat, s.db = cat, db
	}
	return s.cat, nil
}

// Apply implements apply.Sink.
func (s *Sink) Apply(ctx context.Context, b *apply.TableBatch) error {
	if !b.Table.HasKey {
		return apply.Reject(errNoKey)
	}
	err := s.apply(ctx, b)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (s *Sink) apply(ctx context.Context, b *apply.TableBatch) error {
	cat, err := s.catalog(ctx)
	if err != nil {
		return err
	}
	ident := identifier(b.Table)
	name := strings.Join(ident, ".")
	tbl, err := s.ensure(ctx, cat, ident, b.Table)
	if err != nil {
		return err
	}
	st, err := readState(tbl)
	if err != nil {
		// Not the rows' fault: retried (and reported) until someone
		// repairs the table's properties.
		return fmt.Errorf("%s: %w", name, err)
	}

	// The batch's changes the table already holds (a replay) are skipped
	// before anything else is looked at.
	truncate := b.Truncate
	if truncate != nil && st.truncated != nil && bytes.Compare(truncate, st.truncated) <= 0 {
		truncate = nil // applied already
	}
	var todo []int
	for i := range b.Rows {
		r := &b.Rows[i]
		if st.applied(r.Records) || (st.truncated != nil && bytes.Compare(r.Order, st.truncated) <= 0) {
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) == 0 && truncate == nil {
		return nil
	}

	w, err := newWriter(tbl, b, s.cfg.SoftDelete)
	if err != nil {
		return apply.Reject(fmt.Errorf("%s: %w", name, err))
	}
	if err := w.convert(todo); err != nil {
		return err
	}
	if err := w.readCurrent(ctx, truncate); err != nil {
		return fmt.Errorf("%s: read the current rows: %w", name, err)
	}
	if err := w.plan(ctx, truncate); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	props, err := st.next(b, truncate)
	if err != nil {
		return err
	}
	if len(w.data) == 0 && len(w.deletes) == 0 && truncate == nil {
		// Every change was older than the row the table holds: nothing
		// to write. The offsets are not recorded; a replay reads the
		// rows again and skips them again.
		return nil
	}
	tx := tbl.NewTransaction()
	if truncate != nil && !s.cfg.SoftDelete && tbl.CurrentSnapshot() != nil {
		// Copy-on-write: data files holding only older rows are dropped,
		// others rewritten without them.
		err := tx.Delete(ctx, iceberg.LessThan(iceberg.Reference(colPosition), string(truncate)), props)
		if err != nil {
			return fmt.Errorf("%s: truncate: %w", name, err)
		}
	}
	if len(w.data) > 0 || len(w.deletes) > 0 {
		rd := tx.NewRowDelta(props)
		if len(w.deletes) > 0 {
			files, err := tx.WriteEqualityDeletes(ctx, w.keyIDs, w.records(w.keySchema, w.deletes))
			if err != nil {
				return fmt.Errorf("%s: write the equality deletes: %w", name, err)
			}
			rd.AddDeletes(files...)
		}
		if len(w.data) > 0 {
			for f, err := range table.WriteRecords(ctx, tbl, w.schema, w.records(w.schema, w.data)) {
				if err != nil {
					return fmt.Errorf("%s: write the data: %w", name, err)
				}
				rd.AddRows(f)
			}
		}
		if err := rd.Commit(ctx); err != nil {
			return fmt.Errorf("%s: stage the row delta: %w", name, err)
		}
	}
	// The table property keeps the offsets across snapshots that do not
	// carry them (compaction) and snapshot expiry; it commits with the
	// data, in the same metadata update.
	if err := tx.SetProperties(props); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		// Transient: a conflict with a concurrent commit (compaction), the
		// catalog locked or unreachable, storage down. If the commit did
		// land after all, the retry finds its offsets and skips the rows.
		return fmt.Errorf("%s: commit: %w", name, err)
	}
	s.maybeCompact(ctx, cat, ident)
	return nil
}

// maybeCompact compacts the table after every CompactEvery commits. A
// failure is logged, not returned: the batch is applied, and the next
// round tries again.
func (s *Sink) maybeCompact(ctx context.Context, cat *sqlcat.Catalog, ident table.Identifier) {
	if s.cfg.CompactEvery <= 0 {
		return
	}
	name := strings.Join(ident, ".")
	s.commits[name]++
	if s.commits[name] < s.cfg.CompactEvery {
		return
	}
	s.commits[name] = 0
	start := time.Now()
	res, err := compactTable(ctx, cat, ident, CompactOptions{}.withDefaults())
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("iceberg compaction failed", zap.String("table", name), zap.Error(err))
		}
		return
	}
	s.log.Info("iceberg table compacted", zap.String("table", name), zap.Duration("took", time.Since(start)),
		zap.Int("data_files_before", res.DataFilesBefore), zap.Int("data_files_after", res.DataFilesAfter),
		zap.Int("delete_files_before", res.DeleteFilesBefore), zap.Int("delete_files_after", res.DeleteFilesAfter),
		zap.Int("snapshots_expired", res.SnapshotsExpired))
}

// ensure loads the table of a source table, creating it (and its
// namespace) or evolving its schema to hold t's columns.
func (s *Sink) ensure(ctx context.Context, cat *sqlcat.Catalog, ident table.Identifier, t *change.Table) (*table.Table, error) {
	tbl, err := cat.LoadTable(ctx, ident)
	if errors.Is(err, catalog.ErrNoSuchTable) {
		tbl, err = s.create(ctx, cat, ident, t)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", strings.Join(ident, "."), err)
	}
	return s.evolve(ctx, tbl, t)
}

func (s *Sink) create(ctx context.Context, cat *sqlcat.Catalog, ident table.Identifier, t *change.Table) (*table.Table, error) {
	var fields []iceberg.NestedField
	var keys []int
	for i, c := range t.Columns {
		f := iceberg.NestedField{ID: i + 1, Name: c.Name, Type: icebergType(c), Required: c.Key}
		if c.Key {
			if isFloat(f.Type) {
				return nil, apply.Reject(fmt.Errorf("key column %s is a %s: Iceberg equality deletes cannot use floating-point columns", c.Name, c.Logical))
			}
			keys = append(keys, f.ID)
		}
		fields = append(fields, f)
	}
	for _, m := range metaColumns(s.cfg.SoftDelete) {
		m.ID = len(fields) + 1
		fields = append(fields, m)
	}
	sc := iceberg.NewSchemaWithIdentifiers(0, keys, fields...)
	if err := createNamespace(ctx, cat, catalog.NamespaceFromIdent(ident)); err != nil {
		return nil, err
	}
	tbl, err := cat.CreateTable(ctx, ident, sc, catalog.WithProperties(iceberg.Properties{
		table.PropertyFormatVersion: "2",
	}))
	if errors.Is(err, catalog.ErrTableAlreadyExists) {
		return cat.LoadTable(ctx, ident) // another process made it
	}
	if err == nil {
		s.log.Info("iceberg table created", zap.String("table", strings.Join(ident, ".")), zap.String("location", tbl.Location()))
	}
	return tbl, err
}

// metaColumns are the _tideline_ columns; IDs are assigned by the caller.
func metaColumns(softDelete bool) []iceberg.NestedField {
	out := []iceberg.NestedField{
		{Name: colPosition, Type: iceberg.PrimitiveTypes.String},
		{Name: colOp, Type: iceberg.PrimitiveTypes.String},
		{Name: colAppliedAt, Type: iceberg.PrimitiveTypes.TimestampTz},
	}
	if softDelete {
		out = append(out, iceberg.NestedField{Name: colDeleted, Type: iceberg.PrimitiveTypes.Bool})
	}
	return out
}

func isFloat(t iceberg.Type) bool {
	switch t.(type) {
	case iceberg.Float32Type, iceberg.Float64Type:
		return true
	}
	return false
}

// evolve adds the columns of t (and the metadata columns) that tbl lacks
// and promotes those whose source type widened, in one schema commit.
func (s *Sink) evolve(ctx context.Context, tbl *table.Table, t *change.Table) (*table.Table, error) {
	sc := tbl.Schema()
	type add struct {
		name string
		typ  iceberg.Type
	}
	var adds, promotes []add
	for _, c := range t.Columns {
		want := icebergType(c)
		f, ok := sc.FindFieldByName(c.Name)
		if !ok {
			adds = append(adds, add{c.Name, want})
			continue
		}
		if to, ok := promotion(f.Type, want); ok {
			promotes = append(promotes, add{c.Name, to})
		}
	}
	for _, m := range metaColumns(s.cfg.SoftDelete) {
		if _, ok := sc.FindFieldByName(m.Name); !ok {
			adds = append(adds, add{m.Name, m.Type})
		}
	}
	if len(adds) == 0 && len(promotes) == 0 {
		return tbl, nil
	}
	name := strings.Join(tbl.Identifier(), ".")
	tx := tbl.NewTransaction()
	us := tx.UpdateSchema(true, false)
	for _, a := range adds {
		us.AddColumn([]string{a.name}, a.typ, "", false, nil)
	}
	for _, p := range promotes {
		us.UpdateColumn([]string{p.name}, table.ColumnUpdate{FieldType: iceberg.Optional[iceberg.Type]{Val: p.typ, Valid: true}})
	}
	if err := us.Commit(); err != nil {
		return nil, apply.Reject(fmt.Errorf("evolve the schema of %s: %w", name, err))
	}
	out, err := tx.Commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("evolve the schema of %s: %w", name, err)
	}
	for _, a := range adds {
		s.log.Info("iceberg column added", zap.String("table", name), zap.String("column", a.name), zap.Stringer("type", a.typ))
	}
	for _, p := range promotes {
		s.log.Info("iceberg column promoted", zap.String("table", name), zap.String("column", p.name), zap.Stringer("type", p.typ))
	}
	return out, nil
}

// state is what the table's newest commits say was applied.
type state struct {
	offsets   map[string]int64 // "topic/partition" -> next offset
	truncated []byte
}

// readState reads the table property and the newest snapshot summary
// that carry the offsets (snapshots that compaction made carry none), and
// keeps the larger of each.
func readState(tbl *table.Table) (state, error) {
	st := state{offsets: map[string]int64{}}
	if err := st.merge(tbl.Properties()); err != nil {
		return st, fmt.Errorf("table property %s: %w", propOffsets, err)
	}
	meta := tbl.Metadata()
	for snap := meta.CurrentSnapshot(); snap != nil; {
		if snap.Summary != nil {
			if _, ok := snap.Summary.Properties[propOffsets]; ok {
				if err := st.merge(snap.Summary.Properties); err != nil {
					return st, fmt.Errorf("snapshot %d: %w", snap.SnapshotID, err)
				}
				break
			}
		}
		if snap.ParentSnapshotID == nil {
			break
		}
		snap = meta.SnapshotByID(*snap.ParentSnapshotID)
	}
	return st, nil
}

func (st *state) merge(p iceberg.Properties) error {
	if v, ok := p[propOffsets]; ok {
		var m map[string]int64
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return fmt.Errorf("%s: %w", propOffsets, err)
		}
		for k, n := range m {
			st.offsets[k] = max(st.offsets[k], n)
		}
	}
	if v, ok := p[propTruncated]; ok && v > string(st.truncated) {
		st.truncated = []byte(v)
	}
	return nil
}

func offsetKey(topic string, partition int32) string {
	return fmt.Sprintf("%s/%d", topic, partition)
}

// applied reports whether every one of recs is below the stored offset
// of its partition. A row without records (a test's batch) is never
// applied.
func (st *state) applied(recs []*kgo.Record) bool {
	if len(recs) == 0 {
		return false
	}
	for _, r := range recs {
		if r.Offset >= st.offsets[offsetKey(r.Topic, r.Partition)] {
			return false
		}
	}
	return true
}

// next returns the properties of the commit that applies b: the offsets
// after every record of b merged with the stored ones, and the newest
// truncate.
func (st *state) next(b *apply.TableBatch, truncate []byte) (iceberg.Properties, error) {
	offs := make(map[string]int64, len(st.offsets)+1)
	for k, v := range st.offsets {
		offs[k] = v
	}
	for i := range b.Rows {
		for _, r := range b.Rows[i].Records {
			k := offsetKey(r.Topic, r.Partition)
			offs[k] = max(offs[k], r.Offset+1)
		}
	}
	j, err := json.Marshal(offs)
	if err != nil {
		return nil, err
	}
	p := iceberg.Properties{propOffsets: string(j)}
	t := st.truncated
	if truncate != nil && bytes.Compare(truncate, t) > 0 {
		t = truncate
	}
	if t != nil {
		p[propTruncated] = string(t)
	}
	return p, nil
}

// current is a target row read back: its position and, when read in full,
// its values by field ID.
type current struct {
	position string
	values   map[int]any
}

// writer builds one batch's commit.
type writer struct {
	tbl        *table.Table
	b          *apply.TableBatch
	softDelete bool
	sc         *iceberg.Schema
	fields     []iceberg.NestedField // of sc, in order
	schema     *arrow.Schema         // sc's, with field IDs
	keySchema  *arrow.Schema         // the key columns'
	keyIDs     []int
	keyCols    []int // batch column index of each key field
	colField   []int // field ID of each batch column
	idPosition int   // field IDs of the metadata columns
	idOp       int
	idApplied  int
	idDeleted  int // 0 without soft deletes

	todo    []int   // indexes of the rows to write
	values  [][]any // by batch row, aligned with the batch's columns
	full    bool    // read the current rows' every column
	cur     map[string]current
	data    [][]any // rows to add, aligned with fields
	deletes [][]any // keys to delete, aligned with keyIDs
	now     arrow.Timestamp
}

func newWriter(tbl *table.Table, b *apply.TableBatch, softDelete bool) (*writer, error) {
	sc := tbl.Schema()
	w := &writer{tbl: tbl, b: b, softDelete: softDelete, sc: sc, fields: sc.Fields(), now: arrow.Timestamp(time.Now().UnixMicro())}
	var err error
	if w.schema, err = table.SchemaToArrowSchema(sc, nil, true, false); err != nil {
		return nil, err
	}
	byName := map[string]int{}
	for j, c := range b.Table.Columns {
		byName[c.Name] = j
		f, ok := sc.FindFieldByName(c.Name)
		if !ok {
			return nil, fmt.Errorf("column %s is not in the Iceberg schema", c.Name)
		}
		w.colField = append(w.colField, f.ID)
	}
	// Key fields in schema order, the order of the equality-delete
	// file's columns.
	var keyNames []string
	for _, f := range w.fields {
		j, ok := byName[f.Name]
		if !ok || !b.Table.Columns[j].Key {
			continue
		}
		if isFloat(f.Type) {
			return nil, fmt.Errorf("key column %s is a %s: Iceberg equality deletes cannot use floating-point columns", f.Name, f.Type)
		}
		w.keyIDs = append(w.keyIDs, f.ID)
		w.keyCols = append(w.keyCols, j)
		keyNames = append(keyNames, f.Name)
	}
	ks, err := sc.Select(true, keyNames...)
	if err != nil {
		return nil, err
	}
	if w.keySchema, err = table.SchemaToArrowSchema(ks, nil, true, false); err != nil {
		return nil, err
	}
	meta := func(n string) int {
		f, ok := sc.FindFieldByName(n)
		if !ok {
			return 0
		}
		return f.ID
	}
	w.idPosition, w.idOp, w.idApplied = meta(colPosition), meta(colOp), meta(colAppliedAt)
	if softDelete {
		w.idDeleted = meta(colDeleted)
	}
	// A column of the table that the batch does not carry at all (the
	// source dropped it) keeps its value only if the current rows are
	// read in full.
	for _, f := range w.fields {
		if _, ok := byName[f.Name]; !ok && !strings.HasPrefix(f.Name, "_tideline_") {
			w.full = true
		}
	}
	w.full = w.full || softDelete
	return w, nil
}

// convert renders the values of rows todo, returning a *apply.RowError for
// the first row with a value its column cannot take.
func (w *writer) convert(todo []int) error {
	w.todo = todo
	w.values = make([][]any, len(w.b.Rows))
	for _, i := range todo {
		r := &w.b.Rows[i]
		vals := make([]any, len(r.Values))
		for j, raw := range r.Values {
			c := &w.b.Table.Columns[j]
			if raw == nil || apply.IsUnavailable(raw) {
				if c.Key {
					return &apply.RowError{Index: i, Err: fmt.Errorf("the change lacks key column %s", c.Name)}
				}
				if r.Op != change.OpDelete {
					w.full = true // its current value is kept
				}
				continue
			}
			f, _ := w.sc.FindFieldByID(w.colField[j])
			v, err := convert(raw, f.Type, c.Logical)
			if err == nil && v == nil && c.Key {
				err = errors.New("null key value")
			}
			if err != nil {
				return &apply.RowError{Index: i, Err: fmt.Errorf("column %s: %w", c.Name, err)}
			}
			vals[j] = v
		}
		w.values[i] = vals
	}
	return nil
}

func (w *writer) key(i int) []any {
	k := make([]any, len(w.keyCols))
	for n, j := range w.keyCols {
		k[n] = w.values[i][j]
	}
	return k
}

// readCurrent reads the target rows of the batch's keys. Rows older than
// a truncate in the batch are left out: the truncate removes them.
func (w *writer) readCurrent(ctx context.Context, truncate []byte) error {
	w.cur = map[string]current{}
	if w.tbl.CurrentSnapshot() == nil || len(w.todo) == 0 {
		return nil
	}
	// One IN list per key column: a superset of the keys for a
	// composite key, narrowed here by the exact key.
	var filter iceberg.BooleanExpression
	for n, id := range w.keyIDs {
		f, _ := w.sc.FindFieldByID(id)
		seen := map[string]bool{}
		var lits []iceberg.Literal
		for _, i := range w.todo {
			v := w.values[i][w.keyCols[n]]
			if k := keyOf([]any{v}); !seen[k] {
				seen[k] = true
				lits = append(lits, literal(v, f.Type))
			}
		}
		in := iceberg.SetPredicate(iceberg.OpIn, iceberg.Reference(f.Name), lits)
		if filter == nil {
			filter = in
		} else {
			filter = iceberg.NewAnd(filter, in)
		}
	}
	opts := []table.ScanOption{table.WithRowFilter(filter)}
	if !w.full {
		names := []string{colPosition}
		for _, id := range w.keyIDs {
			f, _ := w.sc.FindFieldByID(id)
			names = append(names, f.Name)
		}
		opts = append(opts, table.WithSelectedFields(names...))
	}
	_, recs, err := w.tbl.Scan(opts...).ToArrowRecords(ctx)
	if err != nil {
		return err
	}
	for rec, err := range recs {
		if err != nil {
			return err
		}
		err := w.addCurrent(rec, truncate)
		rec.Release()
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) addCurrent(rec arrow.RecordBatch, truncate []byte) error {
	rs := rec.Schema()
	col := func(name string) arrow.Array {
		if idx := rs.FieldIndices(name); len(idx) > 0 {
			return rec.Column(idx[0])
		}
		return nil
	}
	pos := col(colPosition)
	keys := make([]arrow.Array, len(w.keyIDs))
	for n, id := range w.keyIDs {
		f, _ := w.sc.FindFieldByID(id)
		if keys[n] = col(f.Name); keys[n] == nil {
			return fmt.Errorf("the scan did not return key column %s", f.Name)
		}
	}
	for row := range int(rec.NumRows()) {
		p := ""
		if pos != nil {
			if v, ok := readValue(pos, row).(string); ok {
				p = v
			}
		}
		if truncate != nil && p < string(truncate) {
			continue
		}
		k := make([]any, len(keys))
		for n, a := range keys {
			k[n] = readValue(a, row)
		}
		c := current{position: p}
		if w.full {
			c.values = make(map[int]any, len(w.fields))
			for _, f := range w.fields {
				if a := col(f.Name); a != nil {
					c.values[f.ID] = readValue(a, row)
				}
			}
		}
		w.cur[keyOf(k)] = c
	}
	return nil
}

// plan decides, row by row, what the commit writes: the keys whose target
// row is replaced or deleted, and the new row images.
func (w *writer) plan(ctx context.Context, truncate []byte) error {
	byKey := map[string]int{} // key -> index into w.data
	if truncate != nil && w.softDelete {
		// Soft deletes keep truncated rows, marked deleted.
		if err := w.softTruncate(ctx, truncate, byKey); err != nil {
			return err
		}
	}
	for _, i := range w.todo {
		r := &w.b.Rows[i]
		kv := w.key(i)
		k := keyOf(kv)
		c, has := w.cur[k]
		if has && c.position >= string(r.Order) {
			continue // the table holds this change or a newer one
		}
		if has {
			w.deletes = append(w.deletes, kv)
		}
		var row []any
		switch {
		case r.Op != change.OpDelete:
			row = w.image(i, c, has)
		case w.softDelete:
			row = w.image(i, c, has)
			row[w.index(w.idDeleted)] = true
		default:
			continue
		}
		if n, ok := byKey[k]; ok {
			w.data[n] = row
		} else {
			byKey[k] = len(w.data)
			w.data = append(w.data, row)
		}
	}
	return nil
}

// image is the new target row of batch row i: its values, then for the
// columns it lacks the current row's (c, if has).
func (w *writer) image(i int, c current, has bool) []any {
	r := &w.b.Rows[i]
	row := make([]any, len(w.fields))
	if has && c.values != nil {
		for n, f := range w.fields {
			row[n] = c.values[f.ID]
		}
	}
	for j, raw := range r.Values {
		if raw == nil || apply.IsUnavailable(raw) {
			continue
		}
		row[w.index(w.colField[j])] = w.values[i][j]
	}
	row[w.index(w.idPosition)] = string(r.Order)
	row[w.index(w.idOp)] = r.Op.String()
	row[w.index(w.idApplied)] = w.now
	if w.idDeleted != 0 {
		row[w.index(w.idDeleted)] = false
	}
	return row
}

// index is the position of field id in w.fields.
func (w *writer) index(id int) int {
	for n, f := range w.fields {
		if f.ID == id {
			return n
		}
	}
	panic(fmt.Sprintf("field %d not in the schema", id)) // metadata columns are ensured
}

// softTruncate marks every live row older than the truncate deleted.
func (w *writer) softTruncate(ctx context.Context, truncate []byte, byKey map[string]int) error {
	_, recs, err := w.tbl.Scan(table.WithRowFilter(iceberg.NewAnd(
		iceberg.LessThan(iceberg.Reference(colPosition), string(truncate)),
		iceberg.NewNot(iceberg.EqualTo(iceberg.Reference(colDeleted), true)),
	))).ToArrowRecords(ctx)
	if err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	for rec, err := range recs {
		if err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
		rs := rec.Schema()
		for row := range int(rec.NumRows()) {
			vals := make([]any, len(w.fields))
			for n, f := range w.fields {
				if idx := rs.FieldIndices(f.Name); len(idx) > 0 {
					vals[n] = readValue(rec.Column(idx[0]), row)
				}
			}
			kv := make([]any, len(w.keyIDs))
			for n, id := range w.keyIDs {
				kv[n] = vals[w.index(id)]
			}
			vals[w.index(w.idPosition)] = string(truncate)
			vals[w.index(w.idOp)] = change.OpTruncate.String()
			vals[w.index(w.idApplied)] = w.now
			vals[w.index(w.idDeleted)] = true
			k := keyOf(kv)
			delete(w.cur, k) // the batch's rows replace it as if absent
			byKey[k] = len(w.data)
			w.data = append(w.data, vals)
			w.deletes = append(w.deletes, kv)
		}
		rec.Release()
	}
	return nil
}

// records yields rows (aligned with sc's fields) as one record batch.
func (w *writer) records(sc *arrow.Schema, rows [][]any) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		b := array.NewRecordBuilder(memory.DefaultAllocator, sc)
		defer b.Release()
		for _, row := range rows {
			for n, v := range row {
				if err := appendValue(b.Field(n), v); err != nil {
					yield(nil, fmt.Errorf("column %s: %w", sc.Field(n).Name, err))
					return
				}
			}
		}
		yield(b.NewRecordBatch(), nil)
	}
}
