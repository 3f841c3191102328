// Package change holds the types that flow through Tideline: change events,
// their values, source positions and the batches a source hands to the
// publisher. It is pure data: no I/O, no clients.
package change

import (
	"errors"
	"strconv"
	"strings"
)

// Op is the kind of change, with Debezium's one-letter codes.
type Op byte

// The operations. Read is a row from a snapshot.
const (
	OpCreate   Op = 'c'
	OpUpdate   Op = 'u'
	OpDelete   Op = 'd'
	OpRead     Op = 'r'
	OpTruncate Op = 't'
)

// String returns the one-letter code ("c", "u", …).
func (o Op) String() string { return string(rune(o)) }

// Ops lists every operation, for metrics that pre-create their labels.
var Ops = []Op{OpCreate, OpUpdate, OpDelete, OpRead, OpTruncate}

// Kind says what a Value holds.
type Kind uint8

// The value kinds. A zero Value is Null.
const (
	// Null is SQL NULL.
	Null Kind = iota
	// Present means JSON holds the value's JSON representation.
	Present
	// Unavailable means the source did not send the value (PostgreSQL's
	// unchanged TOASTed column). Encoders write UnavailableMarker and sinks
	// keep the value they already have.
	Unavailable
)

// UnavailableMarker is written in place of a value the source did not send.
// It is the string Debezium uses for the same case, so Debezium-aware
// consumers already recognise it.
const UnavailableMarker = "__debezium_unavailable_value"

// Value is one column's value, already rendered as a JSON fragment by the
// source that read it (the source owns its type mapping, see docs/types.md).
// JSON may point into a buffer the source reuses: a Value is valid only until
// the Event it belongs to has been encoded.
type Value struct {
	Kind Kind
	JSON []byte
}

// Logical is a column's type as sinks see it: what its JSON value holds,
// independent of the source database (docs/types.md lists the mapping from
// each source's types).
type Logical string

// The logical types. Values are rendered as docs/types.md says: integers
// as numbers, Decimal as a string, Date as days and Time, Timestamp as
// microseconds, TimestampTZ as an ISO-8601 UTC string, Bytes as base64.
const (
	Int16       Logical = "int16"
	Int32       Logical = "int32"
	Int64       Logical = "int64"
	Uint64      Logical = "uint64"
	Decimal     Logical = "decimal"
	Float32     Logical = "float32"
	Float64     Logical = "float64"
	Bool        Logical = "bool"
	String      Logical = "string"
	Bytes       Logical = "bytes"
	JSON        Logical = "json"
	UUID        Logical = "uuid"
	Date        Logical = "date"
	Time        Logical = "time"
	Timestamp   Logical = "timestamp"
	TimestampTZ Logical = "timestamptz"
	TimeTZ      Logical = "timetz"
	Interval    Logical = "interval"
	Array       Logical = "array"
)

// Column describes one column of a table.
type Column struct {
	Name string
	// Type is the source's name for the column type, with its length or
	// precision when it has one (e.g. "int4", "numeric(10,2)",
	// "varchar(50)").
	Type string
	// Logical is the type sinks map to their own.
	Logical Logical
	// Key marks the columns that identify a row (primary key or replica
	// identity). They make up the Kafka record key.
	Key bool
}

// Table is the shape of a captured table at some point in the log. A source
// replaces the *Table it hands out when the shape changes, so an Event's
// Table always matches its values.
type Table struct {
	// Database is the database (PostgreSQL) or schema-less db (MySQL).
	Database string
	// Schema is the PostgreSQL schema; empty for MySQL.
	Schema string
	Name   string
	// Topic is the Kafka topic the table's events go to.
	Topic   string
	Columns []Column
	// HasKey reports whether any column is a Key column. Events of a table
	// without key columns have a null Kafka key.
	HasKey bool
}

// Label names the table in metrics and the status: schema.table
// (PostgreSQL) or db.table (MySQL).
func (t *Table) Label() string {
	if t.Schema != "" {
		return t.Schema + "." + t.Name
	}
	return t.Database + "." + t.Name
}

// Source is the part of an event's metadata that says where it came from.
// Fields that a connector does not use stay zero and are not encoded.
type Source struct {
	// Connector is "postgresql" or "mysql".
	Connector string
	// Name is the logical name of the pipeline (the topic prefix).
	Name string
	// TsMs is the commit time at the source, in Unix milliseconds.
	TsMs int64
	// Snapshot is "true", "last" or "false", as in Debezium.
	Snapshot string
	// TxID is the source transaction id (PostgreSQL xid).
	TxID int64
	// LSN is the PostgreSQL log position of the change.
	LSN uint64

	// MySQL: the binlog file and the position of the rows event, the row's
	// index in it, the transaction's GTID (empty without GTIDs), and the
	// originating server and thread.
	ServerID uint32
	GTID     string
	File     string
	Pos      uint64
	Row      int32
	Thread   int64
}

// Event is one change to one row (or, for a truncate, to one table).
//
// Before and After are aligned with Table.Columns; a nil slice means the
// image is absent (no before image for an insert, no after image for a
// delete).
type Event struct {
	Op     Op
	Table  *Table
	Before []Value
	After  []Value
	Source Source
	// TxOrder is the event's 1-based position in its transaction, and
	// TxTableOrder its position among the transaction's events of the same
	// table; zero for snapshot rows.
	TxOrder      int64
	TxTableOrder int64
	// TxLSN is the commit position of the event's transaction (PostgreSQL);
	// with Source.TxID it forms transaction.id ("xid:lsn"), the same for
	// every event of the transaction.
	TxLSN uint64
	// TxName, when set, is transaction.id instead (MySQL: the GTID, or
	// file:position of the transaction's start).
	TxName string
}

// ErrUnknownShape is wrapped by the error of a shape lookup (the schemas
// topic) for a fingerprint nobody published: a record naming it cannot be
// decoded, ever.
var ErrUnknownShape = errors.New("unknown table shape")

// Position is a source position, owned and interpreted only by the source
// that made it. Everyone else treats it as an opaque token.
type Position string

// Record is an encoded Kafka record. Partition is -1 to let the publisher's
// partitioner choose (murmur2 of the key, as Kafka does).
type Record struct {
	Topic string
	Key   []byte
	Value []byte
	// Order sorts (bytewise) like the event's position in the source's
	// log: sinks keep a row's newest change by it. Nil for tombstones.
	Order []byte
	// Schema is the fingerprint of Table's shape in the schemas topic,
	// set by the publisher.
	Schema []byte
	// Table and Op are kept for metrics; they are not sent.
	Table *Table
	Op    Op
}

// Size is the record's weight against the in-flight byte budget.
func (r *Record) Size() int { return len(r.Key) + len(r.Value) + len(r.Topic) + len(r.Order) + 64 }

// Batch is the unit a source hands to the publisher: encoded records in log
// order, and the checkpoint to commit once they and everything before them
// are durably delivered.
type Batch struct {
	Records []Record
	// Bytes is the sum of Records' sizes.
	Bytes int
	// Checkpoint, when set, is a position at a transaction boundary at or
	// after the last record of this batch. The source may be told to commit
	// it only once this batch and every earlier one are delivered.
	Checkpoint Position
	// CommitMicros is the source commit time (Unix microseconds) of the
	// oldest transaction with records in this batch, or 0.
	CommitMicros int64
}

// Add appends r and accounts its size.
func (b *Batch) Add(r Record) {
	b.Records = append(b.Records, r)
	b.Bytes += r.Size()
}

// Reset empties the batch for reuse, keeping its capacity.
func (b *Batch) Reset() {
	clear(b.Records)
	b.Records = b.Records[:0]
	b.Bytes = 0
	b.Checkpoint = ""
	b.CommitMicros = 0
}

// Sample is a table's shape and some of its current rows, converted as a
// snapshot converts them (tideline preview and validate read them).
type Sample struct {
	Table *Table
	Rows  [][]Value
}

// Precision parses the precision and scale of a column type such as
// "numeric(10,2)" or "decimal(30,10) unsigned" (scale 0 when absent); ok
// is false for a type without them.
func Precision(typ string) (p, s int, ok bool) {
	open := strings.IndexByte(typ, '(')
	end := strings.IndexByte(typ, ')')
	if open < 0 || end < open {
		return 0, 0, false
	}
	ps, ss, _ := strings.Cut(typ[open+1:end], ",")
	p, err1 := strconv.Atoi(strings.TrimSpace(ps))
	s, err2 := strconv.Atoi(strings.TrimSpace(ss))
	if ss == "" {
		s, err2 = 0, nil
	}
	if err1 != nil || err2 != nil || p <= 0 {
		return 0, 0, false
	}
	return p, s, true
}
