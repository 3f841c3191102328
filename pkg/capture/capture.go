// Package capture runs a pipeline: Source -> Publisher -> Tracker ->
// Source.Commit. Batches flow forward; only delivery acks move checkpoints.
package capture

import (
	"context"
	"errors"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// Source reads a database log and hands ordered batches to a Handler.
type Source interface {
	// Run reads from the last committed position until ctx is done or an
	// error stops it. It is called from one goroutine; after it returns it
	// may be called again (the pipeline restarts a source after a
	// connection loss), and it resumes from the last committed position.
	//
	// On ctx cancellation Run stops reading, calls h.Drain so that
	// everything handed over is delivered and committed, confirms the last
	// committed position to the database, and returns nil.
	Run(ctx context.Context, h Handler) error

	// Commit tells the source that every change up to pos (a Checkpoint
	// the source put on a batch) is durably delivered. It is called from a
	// producer goroutine, concurrently with Run, with positions in order;
	// it must not block. The source confirms the position to the database
	// on its own schedule.
	Commit(pos change.Position)
}

// Handler takes the batches a Source produces.
type Handler interface {
	// Handle takes b, blocking while the in-flight budget is full. It
	// either takes the whole batch (nil) or none of it (an error); when
	// ctx's deadline passes first it returns ctx.Err() and the caller may
	// do housekeeping (keepalives) and call it again with the same batch.
	// Handle keeps no reference to b or its Records slice once it returns,
	// so the caller may reuse them; it may keep the records' Key and Value
	// bytes, which the caller must not modify afterwards.
	Handle(ctx context.Context, b *change.Batch) error

	// Drain waits until every batch taken so far is delivered (and its
	// checkpoint committed) or ctx is done.
	Drain(ctx context.Context) error
}

// ErrFatal marks errors a restart cannot fix (bad preconditions, a
// misconfigured table): the pipeline stops instead of retrying.
var ErrFatal = errors.New("fatal")

// IsFatal reports whether err is marked fatal.
func IsFatal(err error) bool { return errors.Is(err, ErrFatal) }

// Fatal wraps err so that errors.Is(err, ErrFatal) holds.
func Fatal(err error) error {
	if err == nil {
		return nil
	}
	return fatalError{err}
}

type fatalError struct{ err error }

func (f fatalError) Error() string        { return f.err.Error() }
func (f fatalError) Unwrap() []error      { return []error{f.err, ErrFatal} }
func (f fatalError) Is(target error) bool { return target == ErrFatal }
