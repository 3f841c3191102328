// Package apply is the sink runtime: it reads the change topics as a Kafka
// consumer group, decodes and folds the changes per key, hands them to a
// Sink table by table, sends records a sink rejects to a dead-letter topic,
// and commits the Kafka offsets only after the records were applied.
package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// Sink writes folded changes to a target. The runtime calls its methods
// from one goroutine at a time.
type Sink interface {
	// Apply writes one table's folded changes so that afterwards the
	// target row of every key reflects its newest change, and it must be
	// idempotent: applying a batch again, or an older batch after a newer
	// one (a replay after a crash), changes nothing. Rows carry their
	// Order for that guard.
	//
	// A returned error is transient (retried with backoff, without limit)
	// unless it is marked Permanent (the runtime then splits the batch to
	// find the rows at fault and sends them to the dead-letter topic) or
	// is a *RowError or RowErrors (those rows go to the dead-letter topic
	// at once and the rest is retried). On cancellation Apply returns
	// ctx.Err().
	Apply(ctx context.Context, b *TableBatch) error

	// Close releases the sink's connections. It is called once, after the
	// last Apply.
	Close() error
}

// ChangeLog is a Sink that records every change rather than mirroring the
// table (a change log, as the Parquet sink writes): the runtime does not
// fold its batches. Rows then hold one change each, in log order per
// partition (partitions interleaved as polled); a truncate is a Row of
// OpTruncate with no values (TableBatch.Truncate stays nil); a delete's
// Values are its whole before image.
type ChangeLog interface {
	Sink
	// KeepsEveryChange marks the sink; it is never called.
	KeepsEveryChange()
}

// BeforeImages is a Sink that needs a delete's whole before image, not
// only its key columns (a CRM sink that finds the record to archive by
// an e-mail address). The source sends the whole image only when the
// table's replica identity is FULL (PostgreSQL); MySQL's binlog always
// does.
type BeforeImages interface {
	Sink
	// WantsBeforeImages marks the sink; it is never called.
	WantsBeforeImages()
}

// TableBatch is the changes of one table since the last batch, folded per
// key: one Row per key, holding the key's newest change (every change, for
// a ChangeLog sink).
type TableBatch struct {
	// Table is the newest shape seen in the batch. Its Columns are the
	// union of every shape's columns: the newest shape's, then columns
	// that only older shapes had (dropped at the source), so Row values
	// can be aligned with them.
	Table *change.Table
	// Topic is the Kafka topic the changes came from.
	Topic string
	// Truncate, when set, is the Order of a truncate of the table: every
	// target row older than it is removed (or marked deleted) before Rows
	// are applied. Rows holds only changes newer than it.
	Truncate []byte
	Rows     []Row
}

// Row is the newest change of one key.
type Row struct {
	// Op is OpCreate, OpUpdate, OpRead or OpDelete (or OpTruncate, for a
	// ChangeLog sink).
	Op change.Op
	// Key is the Kafka record key: the key columns as a JSON object. It
	// identifies the row in tombstone bookkeeping.
	Key []byte
	// Order is the change's position token (codec.Order): bytewise
	// greater means newer.
	Order []byte
	// TsMs is when the change was committed at the source (the
	// envelope's source.ts_ms), 0 when unknown.
	TsMs int64
	// TxID is the source transaction's id as text (PostgreSQL's txId,
	// MySQL's GTID), nil when the source sent none. It points into the
	// Kafka record's value.
	TxID []byte
	// Values are aligned with TableBatch.Table.Columns: the after image,
	// or the before image for a delete (only its key columns, unless the
	// sink is a ChangeLog or BeforeImages). A nil entry
	// (a column the change's shape did not have) or the unavailable marker
	// (IsUnavailable: an unchanged TOASTed value) means absent: the target
	// keeps what it has. JSON null is SQL NULL.
	Values []json.RawMessage
	// Records are the Kafka records folded into this row, oldest first:
	// what goes to the dead-letter topic if the row is rejected.
	Records []*kgo.Record
}

// Permanent marks err as an error that retrying cannot fix (the target
// rejects a value): the runtime isolates the rows at fault instead of
// retrying.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// IsPermanent reports whether err is marked Permanent, Reject or is a
// RowError or RowErrors.
func IsPermanent(err error) bool {
	var p permanentError
	var r *RowError
	var rs RowErrors
	var a *RejectError
	return errors.As(err, &p) || errors.As(err, &r) || (errors.As(err, &rs) && len(rs) > 0) || errors.As(err, &a)
}

// Reject marks err as the reason every row of the batch is rejected (a
// table the sink cannot write at all): all of them go to the dead-letter
// topic.
func Reject(err error) error { return &RejectError{Err: err} }

// RejectError is what Reject returns.
type RejectError struct{ Err error }

func (e *RejectError) Error() string { return e.Err.Error() }
func (e *RejectError) Unwrap() error { return e.Err }

// RowError says that one row of a batch cannot be written (e.g. a value the
// target's column type rejects).
type RowError struct {
	Index int // into TableBatch.Rows
	Err   error
}

func (e *RowError) Error() string { return fmt.Sprintf("row %d: %v", e.Index, e.Err) }
func (e *RowError) Unwrap() error { return e.Err }

// RowErrors rejects several rows of a batch at once (an API's per-record
// results): each goes to the dead-letter topic with its own error, and the
// rest of the batch is applied again.
type RowErrors []*RowError

func (e RowErrors) Error() string {
	switch len(e) {
	case 0:
		return "no rows rejected"
	case 1:
		return e[0].Error()
	}
	return fmt.Sprintf("%v (and %d more rows)", e[0], len(e)-1)
}
