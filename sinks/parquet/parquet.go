// Package parquet is the change-log sink (type: parquet): every change of a
// captured table becomes one row of a Parquet file, under
//
//	<path>/<schema>.<table>/date=<commit date>/<topic>+<partition>+<first offset>+<last offset>.parquet
//
// (<db>.<table> for MySQL), on local disk or S3 (pkg/objstore). A row holds
// the source columns (the after image; a delete's before image; nothing for
// a truncate) and _tideline_op, _tideline_position, _tideline_commit_ts and
// _tideline_txid. Files are zstd-compressed and written with arrow-go's
// pqarrow; one file holds one partition's changes of one commit date from
// one batch, so the batch settings (batch_records, batch_bytes, linger)
// roll the files.
//
// Exactly once: a file becomes visible only when complete (objstore), and
// the offsets it holds are in its name. Before writing a partition's
// changes the sink knows, from the names of the files already there, the
// last offset written; changes at or below it are skipped. A crash after a
// file was written and before the Kafka offsets were committed replays
// those changes, and they are skipped. The capture side may also have put
// a change in Kafka twice (it re-sends what Kafka had not acknowledged when
// it was killed); those copies carry a source position (Order) that is not
// after the newest one written for the partition, kept in each file's
// metadata (tideline.last_position), and are skipped too. So no change
// appears twice in the lake. (Snapshot rows share one position; a snapshot
// interrupted by a crash and taken again is written again.)
package parquet

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/memory"
	pq "github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/objstore"
)

// The metadata columns every file has after the source columns.
const (
	ColOp       = "_tideline_op"
	ColPosition = "_tideline_position"
	ColCommitTs = "_tideline_commit_ts"
	ColTxID     = "_tideline_txid"
)

// Config is a Parquet sink's settings.
type Config struct {
	Name string
	// Path is file:///dir or s3://bucket/prefix.
	Path string
	// S3 holds the S3 endpoint, region and credentials (empty: AWS's
	// defaults and environment).
	S3 objstore.Options
	// RowGroupRows bounds a row group (default 128k rows).
	RowGroupRows int64
}

// Sink writes change logs.
type Sink struct {
	cfg   Config
	store objstore.Store
	log   *zap.Logger
	mem   memory.Allocator

	mu sync.Mutex
	// next is, per topic+partition, the first offset not yet in the lake,
	// as far as this sink knows, and last the newest source position
	// written (see lakeState).
	next map[string]int64
	last map[string][]byte
}

// LastPositionKey is the Parquet key-value metadata that holds the newest
// source position (Order) in the file.
const LastPositionKey = "tideline.last_position"

// New opens the sink's store.
func New(ctx context.Context, cfg Config, log *zap.Logger) (*Sink, error) {
	if cfg.RowGroupRows <= 0 {
		cfg.RowGroupRows = 128 << 10
	}
	st, err := objstore.Open(ctx, cfg.Path, cfg.S3)
	if err != nil {
		return nil, fmt.Errorf("parquet sink %s: %w", cfg.Name, err)
	}
	return &Sink{cfg: cfg, store: st, log: log, mem: memory.DefaultAllocator,
		next: map[string]int64{}, last: map[string][]byte{}}, nil
}

// KeepsEveryChange makes the sink an apply.ChangeLog: the runtime hands
// it every change, unfolded.
func (s *Sink) KeepsEveryChange() {}

// Close implements apply.Sink.
func (s *Sink) Close() error { return nil }

// Store is where the sink writes.
func (s *Sink) Store() objstore.Store { return s.store }

// fileRe matches the files the sink writes: topic+partition+first+last.
var fileRe = regexp.MustCompile(`(?:^|/)([A-Za-z0-9._-]+)\+(\d+)\+(\d{20})\+(\d{20})\.parquet$`)

// FileName is the name of the file holding offsets first..last of a topic
// partition.
func FileName(topic string, partition int32, first, last int64) string {
	return fmt.Sprintf("%s+%d+%020d+%020d.parquet", topic, partition, first, last)
}

// TableDir is the folder of a table's change log, relative to the path.
func TableDir(t *change.Table) string { return t.Label() }

// Apply implements apply.Sink: it writes tb's changes, partition by
// partition, skipping those already in the lake.
func (s *Sink) Apply(ctx context.Context, tb *apply.TableBatch) error {
	dir := TableDir(tb.Table)
	schema, convs := arrowSchema(tb.Table)
	// Rows by partition, in offset order (the runtime keeps each
	// partition's order; partitions are interleaved).
	parts := map[int32][]int{}
	var order []int32
	for i := range tb.Rows {
		rec := tb.Rows[i].Records[0]
		if _, ok := parts[rec.Partition]; !ok {
			order = append(order, rec.Partition)
		}
		parts[rec.Partition] = append(parts[rec.Partition], i)
	}
	sort.Slice(order, func(a, b int) bool { return order[a] < order[b] })

	// Convert everything first, so that a row the types reject fails the
	// batch before any file is written.
	type out struct {
		key         string
		p           int32
		first, last int64
		rec         arrow.RecordBatch
		lastPos     []byte
	}
	var files []out
	defer func() {
		for _, f := range files {
			f.rec.Release()
		}
	}()
	for _, p := range order {
		idx := parts[p]
		next, last, err := s.lakeState(ctx, dir, tb.Topic, p, tb.Rows[idx[0]].Records[0].Offset)
		if err != nil {
			return err
		}
		kept := idx[:0:0]
		replayed, resent := 0, 0
		for _, i := range idx {
			r := &tb.Rows[i]
			switch c := bytes.Compare(r.Order, last); {
			case r.Records[0].Offset < next:
				replayed++
			case c < 0 || (c == 0 && r.Op != change.OpRead):
				resent++
			default:
				kept = append(kept, i)
				last = r.Order
			}
		}
		if replayed > 0 || resent > 0 {
			s.log.Info("changes already in the lake skipped", zap.String("topic", tb.Topic), zap.Int32("partition", p),
				zap.Int("replayed", replayed), zap.Int64("next_offset", next), zap.Int("resent_by_capture", resent))
		}
		if len(kept) == 0 {
			// Nothing new: the offsets still move on, so that the next
			// batch follows on without a listing.
			s.mu.Lock()
			s.next[partKey(tb.Topic, p)] = max(next, tb.Rows[idx[len(idx)-1]].Records[0].Offset+1)
			s.mu.Unlock()
			continue
		}
		// One file per run of one commit date: a file's offsets are
		// contiguous, so the last offset of the newest file tells what is
		// in the lake.
		for len(kept) > 0 {
			day := commitDay(&tb.Rows[kept[0]])
			n := 1
			for n < len(kept) && commitDay(&tb.Rows[kept[n]]) == day {
				n++
			}
			run := kept[:n]
			kept = kept[n:]
			rec, err := buildRecord(s.mem, schema, convs, tb, run)
			if err != nil {
				return err
			}
			first, last := tb.Rows[run[0]].Records[0].Offset, tb.Rows[run[len(run)-1]].Records[0].Offset
			files = append(files, out{key: dir + "/date=" + day + "/" + FileName(tb.Topic, p, first, last), p: p, first: first, last: last, rec: rec,
				lastPos: tb.Rows[run[len(run)-1]].Order})
		}
	}
	for _, f := range files {
		if err := s.write(ctx, f.key, schema, f.rec, f.lastPos); err != nil {
			return err
		}
		s.mu.Lock()
		s.next[partKey(tb.Topic, f.p)] = f.last + 1
		s.last[partKey(tb.Topic, f.p)] = f.lastPos
		s.mu.Unlock()
	}
	return nil
}

func partKey(topic string, p int32) string { return topic + "+" + strconv.Itoa(int(p)) }

// lakeState returns the first offset of the partition not yet in the lake
// and the newest source position written for it. It trusts what it wrote
// itself while the batches follow on from it; otherwise (the first batch,
// a replay after a crash, a partition that another instance wrote while it
// owned it) it lists the table's files and reads the newest one's
// metadata.
func (s *Sink) lakeState(ctx context.Context, dir, topic string, p int32, first int64) (int64, []byte, error) {
	k := partKey(topic, p)
	s.mu.Lock()
	next, ok := s.next[k]
	last := s.last[k]
	s.mu.Unlock()
	if ok && next == first {
		return next, last, nil
	}
	objs, err := s.store.List(ctx, dir+"/")
	if err != nil {
		return 0, nil, s.storeErr(err)
	}
	next, last = 0, nil
	newest := ""
	for _, o := range objs {
		m := fileRe.FindStringSubmatch(o.Key)
		if m == nil || m[1] != topic || m[2] != strconv.Itoa(int(p)) {
			continue
		}
		if end, _ := strconv.ParseInt(m[4], 10, 64); end+1 > next {
			next, newest = end+1, o.Key
		}
	}
	if newest != "" {
		if last, err = s.lastPosition(ctx, newest); err != nil {
			return 0, nil, err
		}
	}
	s.mu.Lock()
	s.next[k], s.last[k] = next, last
	s.mu.Unlock()
	return next, last, nil
}

// lastPosition reads a file's LastPositionKey metadata.
func (s *Sink) lastPosition(ctx context.Context, key string) ([]byte, error) {
	rc, err := s.store.Open(ctx, key)
	if err != nil {
		return nil, s.storeErr(err)
	}
	defer rc.Close()
	// The footer is at the end; the store has no ranged reads, and the
	// newest file is read once per partition after a start or a replay.
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.store.URL(key), err)
	}
	r, err := file.NewParquetReader(bytes.NewReader(b))
	if err != nil {
		// Retried until someone looks: files appear only complete, so
		// this one was damaged after it was written.
		return nil, fmt.Errorf("parquet sink %s: %s is not a readable Parquet file (%v): move it away and the changes it held from its first offset on are written again (if the group's offsets are reset to it)", s.cfg.Name, s.store.URL(key), err)
	}
	defer r.Close()
	v := r.MetaData().KeyValueMetadata().FindValue(LastPositionKey)
	if v == nil {
		return nil, nil
	}
	return []byte(*v), nil
}

// storeErr marks an error the store says retrying cannot fix (a missing
// bucket, access denied) as permanent for every row.
func (s *Sink) storeErr(err error) error {
	if objstore.IsPermanent(err) {
		return apply.Reject(fmt.Errorf("parquet sink %s: %w", s.cfg.Name, err))
	}
	return err
}

// writerProps are the sink's Parquet writer settings.
func writerProps(rowGroupRows int64) *pq.WriterProperties {
	return pq.NewWriterProperties(pq.WithCompression(compress.Codecs.Zstd), pq.WithMaxRowGroupLength(rowGroupRows),
		pq.WithCreatedBy("tideline"))
}

// WriteTables writes tables (of one schema) to w as one Parquet file with
// the sink's writer settings: the bench's baseline, pqarrow alone.
func WriteTables(w io.Writer, tables []arrow.Table) error {
	if len(tables) == 0 {
		return errors.New("no tables")
	}
	fw, err := pqarrow.NewFileWriter(tables[0].Schema(), w, writerProps(128<<10), pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return err
	}
	for _, t := range tables {
		if err := fw.WriteTable(t, 128<<10); err != nil {
			fw.Close()
			return err
		}
	}
	return fw.Close()
}

// write writes one Parquet file at key, visible only once complete.
func (s *Sink) write(ctx context.Context, key string, schema *arrow.Schema, rec arrow.RecordBatch, lastPos []byte) error {
	w, err := s.store.Create(ctx, key)
	if err != nil {
		return s.storeErr(err)
	}
	fw, err := pqarrow.NewFileWriter(schema, w, writerProps(s.cfg.RowGroupRows), pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err == nil {
		err = fw.Write(rec)
		if err == nil {
			err = fw.AppendKeyValueMetadata(LastPositionKey, string(lastPos))
		}
		if cerr := fw.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		_ = w.Abort()
		return s.storeErr(fmt.Errorf("write %s: %w", s.store.URL(key), err))
	}
	if err := w.Commit(); err != nil {
		_ = w.Abort()
		return s.storeErr(err)
	}
	return nil
}

// commitDay is the UTC date of a change's commit (of the Kafka record when
// the source sent no commit time).
func commitDay(r *apply.Row) string {
	ms := r.TsMs
	if ms <= 0 {
		ms = r.Records[0].Timestamp.UnixMilli()
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02")
}

// conv appends one JSON value to a column builder.
type conv func(b array.Builder, v json.RawMessage) error

// arrowSchema maps a table's columns (the type mapping is in
// docs/sinks.md) and adds the metadata columns.
func arrowSchema(t *change.Table) (*arrow.Schema, []conv) {
	fields := make([]arrow.Field, 0, len(t.Columns)+4)
	convs := make([]conv, 0, len(t.Columns))
	for _, c := range t.Columns {
		typ, cv := arrowType(c)
		fields = append(fields, arrow.Field{Name: c.Name, Type: typ, Nullable: true})
		convs = append(convs, cv)
	}
	fields = append(fields,
		arrow.Field{Name: ColOp, Type: arrow.BinaryTypes.String},
		arrow.Field{Name: ColPosition, Type: arrow.BinaryTypes.String},
		arrow.Field{Name: ColCommitTs, Type: &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}, Nullable: true},
		arrow.Field{Name: ColTxID, Type: arrow.BinaryTypes.String, Nullable: true},
	)
	return arrow.NewSchema(fields, nil), convs
}

func arrowType(c change.Column) (arrow.DataType, conv) {
	switch c.Logical {
	case change.Int16:
		return arrow.PrimitiveTypes.Int16, intConv(func(b array.Builder, n int64) error {
			if n < math.MinInt16 || n > math.MaxInt16 {
				return errRange
			}
			b.(*array.Int16Builder).Append(int16(n))
			return nil
		})
	case change.Int32, change.Date:
		typ := arrow.DataType(arrow.PrimitiveTypes.Int32)
		if c.Logical == change.Date {
			typ = arrow.FixedWidthTypes.Date32
		}
		return typ, intConv(func(b array.Builder, n int64) error {
			if n < math.MinInt32 || n > math.MaxInt32 {
				return errRange
			}
			switch b := b.(type) {
			case *array.Int32Builder:
				b.Append(int32(n))
			case *array.Date32Builder:
				b.Append(arrow.Date32(n))
			}
			return nil
		})
	case change.Int64:
		return arrow.PrimitiveTypes.Int64, intConv(func(b array.Builder, n int64) error {
			b.(*array.Int64Builder).Append(n)
			return nil
		})
	case change.Time:
		return arrow.FixedWidthTypes.Time64us, intConv(func(b array.Builder, n int64) error {
			b.(*array.Time64Builder).Append(arrow.Time64(n))
			return nil
		})
	case change.Timestamp:
		return &arrow.TimestampType{Unit: arrow.Microsecond}, intConv(func(b array.Builder, n int64) error {
			b.(*array.TimestampBuilder).Append(arrow.Timestamp(n))
			return nil
		})
	case change.Uint64:
		return arrow.PrimitiveTypes.Uint64, func(b array.Builder, v json.RawMessage) error {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return err
			}
			b.(*array.Uint64Builder).Append(n)
			return nil
		}
	case change.Float32, change.Float64:
		typ := arrow.DataType(arrow.PrimitiveTypes.Float64)
		if c.Logical == change.Float32 {
			typ = arrow.PrimitiveTypes.Float32
		}
		return typ, func(b array.Builder, v json.RawMessage) error {
			text := string(v)
			if len(v) > 0 && v[0] == '"' {
				s, err := codec.JSONString(v)
				if err != nil {
					return err
				}
				text = s // "NaN", "Infinity", "-Infinity"
			}
			f, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return err
			}
			switch b := b.(type) {
			case *array.Float32Builder:
				b.Append(float32(f))
			case *array.Float64Builder:
				b.Append(f)
			}
			return nil
		}
	case change.Bool:
		return arrow.FixedWidthTypes.Boolean, func(b array.Builder, v json.RawMessage) error {
			switch string(v) {
			case "true":
				b.(*array.BooleanBuilder).Append(true)
			case "false":
				b.(*array.BooleanBuilder).Append(false)
			default:
				return fmt.Errorf("%s is not a boolean", v)
			}
			return nil
		}
	case change.Bytes:
		return arrow.BinaryTypes.Binary, func(b array.Builder, v json.RawMessage) error {
			s, err := codec.JSONString(v)
			if err != nil {
				return err
			}
			raw, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return fmt.Errorf("not base64: %w", err)
			}
			b.(*array.BinaryBuilder).Append(raw)
			return nil
		}
	case change.TimestampTZ:
		return &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, func(b array.Builder, v json.RawMessage) error {
			s, err := codec.JSONString(v)
			if err != nil {
				return err
			}
			ts, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return err
			}
			b.(*array.TimestampBuilder).Append(arrow.Timestamp(ts.UnixMicro()))
			return nil
		}
	case change.Decimal:
		// Only a type with both precision and scale ("numeric(10,2)") is a
		// DECIMAL here; "numeric(10)" stays text, as files already
		// written have it.
		if p, sc, ok := change.Precision(c.Type); ok && strings.Contains(c.Type, ",") {
			if p <= 38 && sc >= 0 && sc <= p {
				return &arrow.Decimal128Type{Precision: int32(p), Scale: int32(sc)}, func(b array.Builder, v json.RawMessage) error {
					s, err := codec.JSONString(v)
					if err != nil {
						s = string(v) // a number
					}
					n, err := decimal128.FromString(s, int32(p), int32(sc))
					if err != nil {
						return err
					}
					b.(*array.Decimal128Builder).Append(n)
					return nil
				}
			}
		}
	}
	// String, UUID, JSON, Array, TimeTZ, Interval and unconstrained
	// decimals: the source's text (JSON and arrays as JSON text).
	return arrow.BinaryTypes.String, func(b array.Builder, v json.RawMessage) error {
		if len(v) > 0 && v[0] == '"' {
			s, err := codec.JSONString(v)
			if err != nil {
				return err
			}
			b.(*array.StringBuilder).Append(s)
			return nil
		}
		b.(*array.StringBuilder).Append(string(v))
		return nil
	}
}

var errRange = errors.New("out of the column type's range")

func intConv(put func(array.Builder, int64) error) conv {
	return func(b array.Builder, v json.RawMessage) error {
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return err
		}
		return put(b, n)
	}
}

// buildRecord converts the rows run of tb to one Arrow record. A value the
// column type cannot hold is an *apply.RowError for its row.
func buildRecord(mem memory.Allocator, schema *arrow.Schema, convs []conv, tb *apply.TableBatch, run []int) (arrow.RecordBatch, error) {
	rb := array.NewRecordBuilder(mem, schema)
	defer rb.Release()
	rb.Reserve(len(run))
	nc := len(convs)
	for _, i := range run {
		row := &tb.Rows[i]
		for c, cv := range convs {
			b := rb.Field(c)
			var v json.RawMessage
			if c < len(row.Values) {
				v = row.Values[c]
			}
			// Absent (a column this change's shape lacked, or an
			// unchanged TOASTed value the source did not send) and SQL
			// NULL are both null in the log.
			if v == nil || string(v) == "null" || apply.IsUnavailable(v) {
				b.AppendNull()
				continue
			}
			if err := cv(b, v); err != nil {
				return nil, &apply.RowError{Index: i, Err: fmt.Errorf("column %s (%s) value %.100s: %w", tb.Table.Columns[c].Name, tb.Table.Columns[c].Logical, v, err)}
			}
		}
		rb.Field(nc).(*array.StringBuilder).Append(row.Op.String())
		rb.Field(nc + 1).(*array.StringBuilder).Append(string(row.Order)) // hex text already
		if row.TsMs > 0 {
			rb.Field(nc + 2).(*array.TimestampBuilder).Append(arrow.Timestamp(row.TsMs))
		} else {
			rb.Field(nc + 2).AppendNull()
		}
		if row.TxID != nil {
			rb.Field(nc + 3).(*array.StringBuilder).Append(string(row.TxID))
		} else {
			rb.Field(nc + 3).AppendNull()
		}
	}
	return rb.NewRecordBatch(), nil
}

// Glob is the DuckDB read_parquet pattern for a table's change log under
// the sink's path.
func Glob(path string, t *change.Table) string {
	return strings.TrimSuffix(path, "/") + "/" + TableDir(t) + "/*/*.parquet"
}
