package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	duckdb "github.com/duckdb/duckdb-go/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/kafka"
	"github.com/tideline-cdc/tideline/pkg/observe"
	icebergsink "github.com/tideline-cdc/tideline/sinks/iceberg"
	"github.com/tideline-cdc/tideline/sinks/parquet"
	sqlsink "github.com/tideline-cdc/tideline/sinks/sql"
)

// Workload S measures the sink side: -sink-rows changes to one table (four
// fifths creates of distinct ids, then updates of random existing ids) are
// produced to the bench's broker as the capture produces them (envelope,
// order and shape headers, the schemas topic), before any timing. Then, for
// each target in turn, the sink runtime (pkg/apply, the sink's default
// batch settings) applies them from offset 0 in a fresh consumer group, and
// is timed from its start until the group committed the end of every
// partition. Beside it, the target's own bulk load of the same final rows
// (the table as it is after the updates) is timed into a fresh table with
// the same columns and primary key, from a CSV file written once:
//
//	PostgreSQL  COPY … FROM STDIN (FORMAT csv), in the bench's server, database sinkbench
//	MariaDB     LOAD DATA LOCAL INFILE, on a throwaway server configured as M-A's
//	DuckDB      COPY … FROM 'file.csv', in a database file in a temp dir
//
// The ratio divides the sink's changes/s by the bulk load's rows/s: a sink
// that keeps up with the target's fastest way in scores 1.

const (
	sinkPrefix     = "sinkbench"
	sinkTopic      = sinkPrefix + ".public.items"
	sinkPartitions = 4
	// sinkTxRows is how many creates one source transaction holds; each
	// update is a transaction of its own.
	sinkTxRows = 100
	// sinkMinRate is the PostgreSQL target (changes/s on 2 cores) and
	// sinkMinRatio every target's minimum sink / bulk-load ratio.
	sinkMinRate  = 50_000
	sinkMinRatio = 0.3
)

// sinkTargets are the -sink-targets names, in run order.
var sinkTargets = []string{"postgres", "mysql", "duckdb", "parquet", "iceberg"}

// sinkReport is the sink workload's part of the report.
type sinkReport struct {
	ran              bool
	err              error // produce or setup failure: no figures
	changes          int
	creates, updates int
	settings         config.Sink // the runtime's batch settings (PostgreSQL, MariaDB)
	duckSettings     config.Sink // DuckDB's
	produceTook      time.Duration
	kafkaBytes       int64 // keys and values produced
	csvBytes         int64
	csvTook          time.Duration
	targets          []sinkTarget
}

// sinkTarget is one target's result.
type sinkTarget struct {
	label    string // PostgreSQL, MariaDB, DuckDB
	bulkHow  string // the bulk load statement, for the report
	version  string
	skipped  string // why it did not run
	err      error  // setup failure
	minRate  float64
	sink     measure
	bulk     measure
	sinkRows int64  // target table rows after the sink run
	bulkRows int64  // rows the bulk load reported
	check    string // set when the sink's table is not the expected one
	// batches, applySecs, retries and dlq are the runtime's metrics:
	// applySecs is the time spent inside Sink.Apply.
	batches, applySecs, retries, dlq float64
	// lake marks a change-log or lake target: every change is a row, and
	// the "bulk" beside it is pqarrow writing the same rows from memory.
	lake  bool
	files int // Parquet files the sink wrote
}

// lakeBenchLinger is the lake targets' linger in the bench.
const lakeBenchLinger = time.Second

// sinkData is the workload's table: the final value of every row, and the
// generator that made them.
type sinkData struct {
	creates, updates int
	qty              []int32 // by id-1
	price            []int64 // cents
	note             []string
	base             int64 // created of id 0, Unix microseconds
}

func (d *sinkData) name(id int) string { return "item-" + strconv.Itoa(id) }

// created is a timestamp without time zone, as microseconds.
func (d *sinkData) created(id int) int64 { return d.base + int64(id)*1_000_003 }

func (d *sinkData) qtySum() int64 {
	var s int64
	for _, q := range d.qty {
		s += int64(q)
	}
	return s
}

const noteLetters = "abcdefghijklmnopqrstuvwxyz     "

// note is about 50 characters of words; no comma or quote, so the CSV
// needs no quoting.
func note(r *rand.Rand) string {
	var b [50]byte
	for i := range b {
		b[i] = noteLetters[r.IntN(len(noteLetters))]
	}
	b[0], b[len(b)-1] = 'n', 'e'
	return string(b[:])
}

// sinkTable is the source table's shape: what the capture would publish
// for `items (id bigint primary key, name text, qty integer,
// price numeric(12,2), created timestamp, note text)`.
func sinkTable() *change.Table {
	return &change.Table{Database: "shop", Schema: "public", Name: "items", Topic: sinkTopic, HasKey: true, Columns: []change.Column{
		{Name: "id", Type: "int8", Logical: change.Int64, Key: true},
		{Name: "name", Type: "text", Logical: change.String},
		{Name: "qty", Type: "int4", Logical: change.Int32},
		{Name: "price", Type: "numeric(12,2)", Logical: change.Decimal},
		{Name: "created", Type: "timestamp", Logical: change.Timestamp},
		{Name: "note", Type: "text", Logical: change.String},
	}}
}

// sinkSettings returns a sink's settings with the config's defaults (batch
// records, bytes and linger), so the bench follows them; batchRecords,
// when above 0, replaces a warehouse sink's batch_records
// (-sink-batch-records).
func sinkSettings(typ string, batchRecords int) config.Sink {
	s := config.Sink{Name: typ, Type: typ}
	switch typ {
	case "postgres", "mysql", "duckdb":
		s.BatchRecords = batchRecords
	}
	c := &config.Config{Name: sinkPrefix, Sinks: []config.Sink{s}}
	c.Defaults()
	return c.Sinks[0]
}

// parseSinkTargets checks -sink-targets.
func parseSinkTargets(s string) ([]string, error) {
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !slices.Contains(sinkTargets, t) {
			return nil, fmt.Errorf("-sink-targets: %q is not one of %s", t, strings.Join(sinkTargets, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// workloadSinks is workload S.
func (b *bench) workloadSinks(ctx context.Context) (rep sinkReport) {
	rep.ran = true
	rep.changes = b.o.sinkRows
	rep.creates = max(rep.changes*4/5, 1)
	rep.updates = rep.changes - rep.creates
	rep.settings = sinkSettings("postgres", b.o.sinkBatchRecords)
	rep.duckSettings = sinkSettings("duckdb", b.o.sinkBatchRecords)
	targets, err := parseSinkTargets(b.o.sinkTargets)
	if err != nil {
		rep.err = err
		return rep
	}
	defer b.deleteTopics(sinkPrefix + ".")
	dir, err := os.MkdirTemp("", "tideline-bench-sinks-*")
	if err != nil {
		rep.err = err
		return rep
	}
	defer os.RemoveAll(dir)

	tab := sinkTable()
	d := &sinkData{creates: rep.creates, updates: rep.updates}
	b.logf("S: producing %d changes (%d creates, %d updates) to %s (%d partitions)", rep.changes, rep.creates, rep.updates, sinkTopic, sinkPartitions)
	t0 := time.Now()
	ends, err := b.produceSink(ctx, d, tab, &rep)
	if err != nil {
		rep.err = fmt.Errorf("produce the sink workload: %w", err)
		return rep
	}
	rep.produceTook = time.Since(t0)
	b.logf("S: produced in %s (%.1f MiB of keys and values)", rep.produceTook.Round(time.Millisecond), float64(rep.kafkaBytes)/(1<<20))

	csvPath := filepath.Join(dir, "items.csv")
	t0 = time.Now()
	if rep.csvBytes, err = writeSinkCSV(csvPath, d); err != nil {
		rep.err = fmt.Errorf("write the bulk-load CSV: %w", err)
		return rep
	}
	rep.csvTook = time.Since(t0)
	b.logf("S: %d final rows written to %s (%.1f MiB) in %s", d.creates, csvPath, float64(rep.csvBytes)/(1<<20), rep.csvTook.Round(time.Millisecond))

	run := sinkRun{d: d, ends: ends, csv: csvPath, dir: dir, changes: rep.changes}
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		var st sinkTarget
		switch t {
		case "postgres":
			st = b.sinkPostgres(ctx, run)
		case "mysql":
			st = b.sinkMariaDB(ctx, run)
		case "duckdb":
			st = b.sinkDuckDB(ctx, run)
		case "parquet":
			st = b.sinkParquet(ctx, run)
		case "iceberg":
			st = b.sinkIceberg(ctx, run)
		}
		rep.targets = append(rep.targets, st)
	}
	return rep
}

// sinkRun is what every target's run shares.
type sinkRun struct {
	d       *sinkData
	ends    kadm.ListedOffsets // the end of every partition of the topic
	csv     string
	dir     string
	changes int
}

// produceSink produces the workload's changes as the capture does and
// returns the end offsets of the topic's partitions.
func (b *bench) produceSink(ctx context.Context, d *sinkData, tab *change.Table, rep *sinkReport) (kadm.ListedOffsets, error) {
	kc := config.Kafka{ClientID: "tideline-bench-sink-producer", Compression: b.o.compress, Linger: 2 * time.Millisecond, MaxMessageBytes: 1 << 20}
	cl, err := kafka.NewClient(kc, b.brokers, 256<<20, zap.NewNop())
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	topics := kafka.NewTopics(cl, config.Topics{Partitions: sinkPartitions, ReplicationFactor: 1}, nil)
	schemas := kafka.NewSchemas(cl, topics, sinkPrefix+".schemas")
	if err := topics.Ensure(ctx, sinkTopic); err != nil {
		return nil, err
	}
	shape, err := schemas.ID(ctx, tab)
	if err != nil {
		return nil, err
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	ack := func(err error) {
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}
		wg.Done()
	}
	rng := rand.New(rand.NewPCG(20240601, 7))
	d.qty = make([]int32, d.creates)
	d.price = make([]int64, d.creates)
	d.note = make([]string, d.creates)
	d.base = time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	enc := codec.NewEncoder("tideline-bench")
	var batch change.Batch
	flush := func() {
		wg.Add(len(batch.Records))
		kafka.Produce(ctx, cl, &batch, ack)
		batch.Reset()
	}
	// Order tokens grow as a PostgreSQL source's do: the commit LSN of the
	// transaction, then the change's place in it.
	lsn, xid := uint64(0x2000000), int64(1000)
	var txOrder int64
	for i := range rep.changes {
		if ctx.Err() != nil {
			break
		}
		var id int
		op := change.OpCreate
		if i < d.creates {
			id = i + 1
			if txOrder == 0 || txOrder == sinkTxRows {
				txOrder = 0
				lsn += 0x10000
				xid++
			}
		} else {
			op = change.OpUpdate
			id = 1 + rng.IntN(d.creates)
			txOrder = 0
			lsn += 0x400
			xid++
		}
		txOrder++
		k := id - 1
		d.qty[k] = int32(rng.IntN(10_000))
		d.price[k] = rng.Int64N(10_000_000) // up to 99,999.99
		d.note[k] = note(rng)
		after := []change.Value{
			{Kind: change.Present, JSON: strconv.AppendInt(nil, int64(id), 10)},
			{Kind: change.Present, JSON: codec.AppendStringS(nil, d.name(id))},
			{Kind: change.Present, JSON: strconv.AppendInt(nil, int64(d.qty[k]), 10)},
			{Kind: change.Present, JSON: codec.AppendStringS(nil, cents(d.price[k]))},
			{Kind: change.Present, JSON: strconv.AppendInt(nil, d.created(id), 10)},
			{Kind: change.Present, JSON: codec.AppendStringS(nil, d.note[k])},
		}
		now := time.Now().UnixMilli()
		ev := change.Event{Op: op, Table: tab, After: after,
			Source:  change.Source{Connector: "postgresql", Name: sinkPrefix, TsMs: now, TxID: xid, LSN: lsn - 0x100 + uint64(txOrder)},
			TxOrder: txOrder, TxTableOrder: txOrder, TxLSN: lsn}
		r := change.Record{Topic: sinkTopic, Key: enc.Key(&ev), Value: enc.Value(&ev, now), Order: codec.Order(&ev), Schema: shape, Table: tab, Op: op}
		rep.kafkaBytes += int64(len(r.Key) + len(r.Value))
		batch.Add(r)
		if len(batch.Records) == 10_000 {
			flush()
		}
	}
	flush()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if first != nil {
		return nil, first
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, sinkTopic)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, err
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	if total != int64(rep.changes) {
		return nil, fmt.Errorf("%s holds %d records, %d produced", sinkTopic, total, rep.changes)
	}
	return ends, nil
}

// cents renders an amount of cents as numeric(12,2) text.
func cents(c int64) string {
	return fmt.Sprintf("%d.%02d", c/100, c%100)
}

// writeSinkCSV writes the final rows, in id order, as CSV every target
// reads: id,name,qty,price,created,note with no header and no quoting.
func writeSinkCSV(path string, d *sinkData) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var line []byte
	for k := range d.creates {
		id := k + 1
		line = strconv.AppendInt(line[:0], int64(id), 10)
		line = append(line, ',')
		line = append(line, d.name(id)...)
		line = append(line, ',')
		line = strconv.AppendInt(line, int64(d.qty[k]), 10)
		line = append(line, ',')
		line = append(line, cents(d.price[k])...)
		line = append(line, ',')
		line = time.UnixMicro(d.created(id)).UTC().AppendFormat(line, "2006-01-02 15:04:05.000000")
		line = append(line, ',')
		line = append(line, d.note[k]...)
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			f.Close()
			return 0, err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	fi, err := f.Stat()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// runSink times the sink runtime applying the topic to s, in a fresh
// consumer group, from its start until the group committed the end of
// every partition. It stops the runtime and closes s before it returns.
func (b *bench) runSink(ctx context.Context, st *sinkTarget, typ string, s apply.Sink, run sinkRun) {
	label := "S " + st.label
	set := sinkSettings(typ, b.o.sinkBatchRecords)
	if st.lake {
		// The default (10 s: a file per 10 s on a quiet stream) would
		// add its full wait after the last record to the time measured.
		set.Linger = lakeBenchLinger
	}
	closeSink := sync.OnceValue(s.Close)
	defer closeSink()
	log, err := observe.NewLogger("warn", "console")
	if err != nil {
		st.sink = measure{err: err}
		return
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ClientID("tideline-bench-sink-admin"))
	if err != nil {
		st.sink = measure{err: err}
		return
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	topics := kafka.NewTopics(cl, config.Topics{Partitions: 1, ReplicationFactor: 1}, nil)
	schemas := kafka.NewSchemas(cl, topics, sinkPrefix+".schemas")
	m := observe.NewMetrics()
	group := "tideline-bench-sink-" + typ
	rt := apply.New(apply.Config{
		Sink: typ, Group: group, TopicPrefix: sinkPrefix, DLQTopic: sinkPrefix + ".dlq." + typ,
		BatchRecords: set.BatchRecords, BatchBytes: int(set.BatchBytes), Linger: set.Linger,
	}, s, apply.Deps{
		Kafka:       []kgo.Opt{kgo.SeedBrokers(b.brokers...), kgo.ClientID("tideline-bench-sink-" + typ)},
		Shape:       schemas.Table,
		EnsureTopic: topics.Ensure,
		Metrics:     m,
		Log:         log.Named("sink").With(zap.String("sink", typ)),
	})

	stopProfile := func() {}
	if b.o.cpuProfile != "" {
		path := b.o.cpuProfile + ".sink." + typ
		if stop, err := startProfile(path); err != nil {
			b.logf("%s: %v", label, err)
		} else {
			stopProfile = sync.OnceFunc(func() {
				stop()
				b.logf("%s: CPU profile of the sink run written to %s", label, path)
			})
		}
	}
	defer stopProfile()

	b.logf("%s: sink runtime applying %s from offset 0 (group %s, batch_records %d, batch_bytes %d, linger %s)",
		label, sinkTopic, group, set.BatchRecords, set.BatchBytes, set.Linger)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	b.mem.begin()
	start := time.Now()
	go func() { done <- rt.Run(rctx) }()
	res := b.waitCommitted(ctx, adm, group, label, run, start, done)
	res.mem = b.mem.end()
	stopProfile()
	cancel()
	select {
	case err := <-done:
		if err != nil && res.err == nil {
			res.note = fmt.Sprintf("the runtime returned %v on shutdown", err)
		}
	case <-time.After(2 * time.Minute):
		if res.err == nil {
			res.err = errors.New("the sink runtime did not stop within 2 minutes of cancel")
		}
	}
	if err := closeSink(); err != nil && res.err == nil {
		res.note = strings.TrimSpace(res.note + fmt.Sprintf(" close: %v", err))
	}
	st.batches, st.retries, st.dlq = sumMetric(m.SinkBatches), sumMetric(m.SinkRetries), sumMetric(m.SinkDLQ)
	st.applySecs = histogramSum(m.SinkApply)
	if st.retries > 0 || st.dlq > 0 {
		res.note = strings.TrimSpace(res.note + fmt.Sprintf(" (%.0f retries, %.0f records to the dead-letter topic)", st.retries, st.dlq))
	}
	st.sink = res
}

// waitCommitted polls the group's committed offsets every 50 ms until they
// reach the end of every partition, the runtime stops, or nothing moves for
// two minutes.
func (b *bench) waitCommitted(ctx context.Context, adm *kadm.Client, group, label string, run sinkRun, start time.Time, done <-chan error) measure {
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	lastLog, lastMove, last := time.Now(), time.Now(), int64(-1)
	for {
		select {
		case <-ctx.Done():
			return measure{err: ctx.Err()}
		case err := <-done:
			return measure{err: fmt.Errorf("the sink runtime stopped before it caught up: %v", err)}
		case <-poll.C:
		}
		committed, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			continue // the group may not exist yet
		}
		var at int64
		caught := true
		run.ends.Each(func(o kadm.ListedOffset) {
			c, ok := committed.Lookup(o.Topic, o.Partition)
			if ok && c.At > 0 {
				at += min(c.At, o.Offset)
			}
			if o.Offset > 0 && (!ok || c.At < o.Offset) {
				caught = false
			}
		})
		if caught {
			took := time.Since(start)
			b.logf("%s: the group committed all %d changes in %s", label, run.changes, took.Round(time.Millisecond))
			return measure{took: took}
		}
		if at != last {
			last, lastMove = at, time.Now()
		} else if time.Since(lastMove) > 2*time.Minute {
			return measure{err: fmt.Errorf("stalled at %d/%d changes committed", at, run.changes)}
		}
		if time.Since(lastLog) > 5*time.Second {
			b.logf("%s: %d/%d changes committed (%.0f/s)", label, at, run.changes, float64(at)/time.Since(start).Seconds())
			lastLog = time.Now()
		}
	}
}

// checkSink compares the sink's table with the expected final rows.
func (b *bench) checkSink(st *sinkTarget, run sinkRun, rows, qty int64, err error) {
	st.sinkRows = rows
	switch {
	case err != nil:
		st.check = fmt.Sprintf("could not count the sink's rows: %v", err)
	case rows != int64(run.d.creates):
		st.check = fmt.Sprintf("the sink's table has %d rows, %d expected", rows, run.d.creates)
	case qty != run.d.qtySum():
		st.check = fmt.Sprintf("the sink's table has sum(qty) %d, %d expected (an update lost or applied out of order)", qty, run.d.qtySum())
	}
	if st.check != "" {
		b.logf("S %s: WARNING: %s", st.label, st.check)
	} else {
		b.logf("S %s: the sink's table has the %d expected rows (count and sum(qty) match)", st.label, rows)
	}
}

// sinkPostgres runs the PostgreSQL target in database sinkbench of the
// bench's server.
func (b *bench) sinkPostgres(ctx context.Context, run sinkRun) (st sinkTarget) {
	st = sinkTarget{label: "PostgreSQL", bulkHow: "COPY FROM STDIN (FORMAT csv)", minRate: sinkMinRate}
	if err := b.pg.CreateDB(ctx, sinkPrefix); err != nil {
		st.err = fmt.Errorf("create database %s: %w", sinkPrefix, err)
		return st
	}
	dsn := b.pg.DSN(sinkPrefix)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		st.err = err
		return st
	}
	defer c.Close(context.Background())
	_ = c.QueryRow(ctx, "SHOW server_version").Scan(&st.version)

	s, err := sqlsink.NewPostgres(ctx, sqlsink.Config{Name: "postgres", Type: "postgres", DSN: dsn}, zap.NewNop())
	if err != nil {
		st.err = err
		return st
	}
	if err := b.settle(ctx); err != nil {
		b.logf("S PostgreSQL: %v", err)
	}
	b.runSink(ctx, &st, "postgres", s, run)
	if st.sink.err != nil {
		return st
	}
	var rows, qty int64
	err = c.QueryRow(ctx, "SELECT count(*), coalesce(sum(qty), 0) FROM public.items").Scan(&rows, &qty)
	b.checkSink(&st, run, rows, qty, err)

	if _, err := c.Exec(ctx, `CREATE TABLE public.items_bulk (id bigint PRIMARY KEY, name text, qty integer, price numeric(12,2), created timestamp(6), note text)`); err != nil {
		st.bulk = measure{err: fmt.Errorf("create the bulk table: %w", err)}
		return st
	}
	if err := b.settle(ctx); err != nil {
		b.logf("S PostgreSQL: %v", err)
	}
	f, err := os.Open(run.csv)
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	defer f.Close()
	b.logf("S PostgreSQL: bulk load: COPY public.items_bulk FROM STDIN (FORMAT csv)")
	start := time.Now()
	tag, err := c.PgConn().CopyFrom(ctx, f, "COPY public.items_bulk (id, name, qty, price, created, note) FROM STDIN (FORMAT csv)")
	st.bulk = measure{took: time.Since(start), err: err}
	st.bulkRows = tag.RowsAffected()
	b.logBulk(&st)
	return st
}

func (b *bench) logBulk(st *sinkTarget) {
	if st.bulk.err != nil {
		b.logf("S %s: bulk load: %v", st.label, st.bulk.err)
		return
	}
	b.logf("S %s: bulk load of %d rows in %s", st.label, st.bulkRows, st.bulk.took.Round(time.Millisecond))
}

// sinkMariaDB runs the MariaDB target on a throwaway server configured as
// the MySQL workloads' (binlog on, relaxed durability).
func (b *bench) sinkMariaDB(ctx context.Context, run sinkRun) (st sinkTarget) {
	st = sinkTarget{label: "MariaDB", bulkHow: "LOAD DATA LOCAL INFILE"}
	conf := maps.Clone(mysqlServerConf)
	// The client sends the file (LOCAL), as COPY FROM STDIN does.
	conf["local_infile"] = "1"
	b.logf("S MariaDB: starting MariaDB")
	srv, err := testenv.StartMariaDB(ctx, testenv.MariaDBOptions{ExtraConf: conf})
	if errors.Is(err, testenv.ErrNotInstalled) {
		st.skipped = err.Error()
		b.logf("S MariaDB: skipped: %s", st.skipped)
		return st
	}
	if err != nil {
		st.err = fmt.Errorf("start mariadb: %w", err)
		return st
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			b.logf("stop mariadb: %v", err)
		}
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", srv.Port())
	b.logf("S MariaDB: at %s (log %s)", addr, srv.LogPath())
	mc := mysql.NewConfig()
	mc.User, mc.Net, mc.Addr = "root", "tcp", addr
	if err := mc.Apply(mysql.Charset("utf8mb4", "")); err != nil {
		st.err = err
		return st
	}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		st.err = err
		return st
	}
	db := sql.OpenDB(conn)
	defer func() { db.Close() }()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+sinkPrefix+" CHARACTER SET utf8mb4"); err != nil {
		st.err = fmt.Errorf("create database %s: %w", sinkPrefix, err)
		return st
	}
	_ = db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&st.version)

	s, err := sqlsink.NewMySQL(ctx, sqlsink.Config{Name: "mysql", Type: "mysql", DSN: "mysql://root@" + addr + "/" + sinkPrefix}, zap.NewNop())
	if err != nil {
		st.err = err
		return st
	}
	b.runSink(ctx, &st, "mysql", s, run)
	if st.sink.err != nil {
		return st
	}
	var rows, qty int64
	err = db.QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM "+sinkPrefix+".items").Scan(&rows, &qty)
	b.checkSink(&st, run, rows, qty, err)

	// A clean shutdown writes the sink run's dirty pages out, so that the
	// bulk load does not pay for them: the PostgreSQL bulk load starts
	// after a CHECKPOINT. (InnoDB's background flushing, held to
	// innodb_io_capacity, takes minutes.)
	db.Close()
	t0 := time.Now()
	if err := srv.Restart(ctx); err != nil {
		st.bulk = measure{err: fmt.Errorf("restart mariadb: %w", err)}
		return st
	}
	b.logf("S MariaDB: restarted in %s, so the bulk load starts with no dirty pages", time.Since(t0).Round(time.Millisecond))
	db = sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+sinkPrefix+".items_bulk (id BIGINT NOT NULL PRIMARY KEY, name LONGTEXT, qty INT, price DECIMAL(12,2), created DATETIME(6), note LONGTEXT) ENGINE=InnoDB"); err != nil {
		st.bulk = measure{err: fmt.Errorf("create the bulk table: %w", err)}
		return st
	}
	f, err := os.Open(run.csv)
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	defer f.Close()
	const reader = "tideline-bench-items"
	mysql.RegisterReaderHandler(reader, func() io.Reader { return f })
	defer mysql.DeregisterReaderHandler(reader)
	b.logf("S MariaDB: bulk load: LOAD DATA LOCAL INFILE into %s.items_bulk", sinkPrefix)
	start := time.Now()
	res, err := db.ExecContext(ctx, "LOAD DATA LOCAL INFILE 'Reader::"+reader+"' INTO TABLE "+sinkPrefix+".items_bulk CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n' (id, name, qty, price, created, note)")
	st.bulk = measure{took: time.Since(start), err: err}
	if err == nil {
		st.bulkRows, _ = res.RowsAffected()
	}
	b.logBulk(&st)
	return st
}

// sinkDuckDB runs the DuckDB target on a database file in the temp dir.
func (b *bench) sinkDuckDB(ctx context.Context, run sinkRun) (st sinkTarget) {
	st = sinkTarget{label: "DuckDB", bulkHow: "COPY FROM 'file.csv'"}
	path := filepath.Join(run.dir, "sinkbench.duckdb")
	s, err := sqlsink.NewDuckDB(ctx, sqlsink.Config{Name: "duckdb", Type: "duckdb", Path: path, KeepOpen: true}, zap.NewNop())
	if err != nil {
		st.err = err
		return st
	}
	b.runSink(ctx, &st, "duckdb", s, run)
	if st.sink.err != nil {
		return st
	}
	// The sink closed the file: one process writes it at a time.
	conn, err := duckdb.NewConnector(path, nil)
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	_ = db.QueryRowContext(ctx, "SELECT version()").Scan(&st.version)
	var rows, qty int64
	err = db.QueryRowContext(ctx, "SELECT count(*), CAST(coalesce(sum(qty), 0) AS BIGINT) FROM public.items").Scan(&rows, &qty)
	b.checkSink(&st, run, rows, qty, err)

	if _, err := db.ExecContext(ctx, "CREATE TABLE public.items_bulk (id BIGINT PRIMARY KEY, name VARCHAR, qty INTEGER, price DECIMAL(12,2), created TIMESTAMP, note VARCHAR)"); err != nil {
		st.bulk = measure{err: fmt.Errorf("create the bulk table: %w", err)}
		return st
	}
	if _, err := db.ExecContext(ctx, "CHECKPOINT"); err != nil {
		b.logf("S DuckDB: checkpoint: %v", err)
	}
	q := fmt.Sprintf("COPY public.items_bulk FROM '%s' (FORMAT csv, HEADER false, DELIMITER ',')", strings.ReplaceAll(run.csv, "'", "''"))
	b.logf("S DuckDB: bulk load: %s", q)
	start := time.Now()
	res, err := db.ExecContext(ctx, q)
	st.bulk = measure{took: time.Since(start), err: err}
	if err == nil {
		st.bulkRows, _ = res.RowsAffected()
	}
	b.logBulk(&st)
	return st
}

// sinkParquet runs the Parquet change log into a local folder, checks it
// with DuckDB (every change once, the newest per id giving the expected
// sum(qty)), then reads the files into memory and times pqarrow writing
// the same rows, with the sink's writer settings, to one file.
func (b *bench) sinkParquet(ctx context.Context, run sinkRun) (st sinkTarget) {
	st = sinkTarget{label: "Parquet (local disk)", bulkHow: "pqarrow from memory", lake: true}
	dir := filepath.Join(run.dir, "lake")
	s, err := parquet.New(ctx, parquet.Config{Name: "parquet", Path: "file://" + dir}, zap.NewNop())
	if err != nil {
		st.err = err
		return st
	}
	b.runSink(ctx, &st, "parquet", s, run)
	if st.sink.err != nil {
		return st
	}
	glob := parquet.Glob("file://"+dir, sinkTable())
	files, _ := filepath.Glob(filepath.Join(dir, "public.items", "*", "*.parquet"))
	st.files = len(files)
	db, err := sql.Open("duckdb", "")
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	defer db.Close()
	_ = db.QueryRowContext(ctx, "SELECT version()").Scan(&st.version)
	var rows, positions, qty int64
	err = db.QueryRowContext(ctx, `SELECT count(*), count(DISTINCT _tideline_position),
		(SELECT CAST(coalesce(sum(q), 0) AS BIGINT) FROM (SELECT arg_max(qty, _tideline_position) AS q FROM read_parquet('`+glob+`') GROUP BY id))
		FROM read_parquet('`+glob+`')`).Scan(&rows, &positions, &qty)
	st.sinkRows = rows
	switch {
	case err != nil:
		st.check = fmt.Sprintf("could not read the change log: %v", err)
	case rows != int64(run.changes) || positions != rows:
		st.check = fmt.Sprintf("the change log has %d rows with %d distinct positions, %d changes expected once each", rows, positions, run.changes)
	case qty != run.d.qtySum():
		st.check = fmt.Sprintf("the newest change per id gives sum(qty) %d, %d expected", qty, run.d.qtySum())
	}
	if st.check != "" {
		b.logf("S %s: WARNING: %s", st.label, st.check)
	} else {
		b.logf("S %s: %d files hold the %d changes once each; the newest per id sum(qty) as expected", st.label, st.files, rows)
	}

	// The same rows, in memory, written by pqarrow alone.
	var tables []arrow.Table
	defer func() {
		for _, t := range tables {
			t.Release()
		}
	}()
	for _, f := range files {
		t, err := readParquetFile(ctx, f)
		if err != nil {
			st.bulk = measure{err: err}
			return st
		}
		tables = append(tables, t)
	}
	out, err := os.Create(filepath.Join(run.dir, "pqarrow.parquet"))
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	defer out.Close()
	b.logf("S %s: bulk: pqarrow writes the %d rows of %d tables from memory to one file", st.label, rows, len(tables))
	start := time.Now()
	err = parquet.WriteTables(struct{ io.Writer }{out}, tables) // not closed by the writer: synced below
	if err == nil {
		err = out.Sync()
	}
	st.bulk = measure{took: time.Since(start), err: err}
	st.bulkRows = rows
	b.logBulk(&st)
	return st
}

// sinkIceberg runs the Iceberg sink into a local warehouse (SQLite
// catalog), checks a scan (the final rows, sum(qty)), then times pqarrow
// writing the scanned rows from memory to one file with the change log's
// writer settings.
func (b *bench) sinkIceberg(ctx context.Context, run sinkRun) (st sinkTarget) {
	st = sinkTarget{label: "Iceberg (local disk, SQLite catalog)", bulkHow: "pqarrow from memory", lake: true, files: -1}
	cfg := icebergsink.Config{Name: "iceberg", Warehouse: filepath.Join(run.dir, "warehouse")}
	s, err := icebergsink.New(ctx, cfg, zap.NewNop())
	if err != nil {
		st.err = err
		return st
	}
	b.runSink(ctx, &st, "iceberg", s, run)
	if st.sink.err != nil {
		return st
	}
	tab, err := icebergsink.ScanTable(ctx, cfg, "public", "items")
	if err != nil {
		st.check = fmt.Sprintf("could not scan the table: %v", err)
		return st
	}
	defer tab.Release()
	st.sinkRows = tab.NumRows()
	var qty int64
	for i, f := range tab.Schema().Fields() {
		if f.Name != "qty" {
			continue
		}
		for _, c := range tab.Column(i).Data().Chunks() {
			a := c.(*array.Int32)
			for j := range a.Len() {
				qty += int64(a.Value(j))
			}
		}
	}
	switch {
	case st.sinkRows != int64(run.d.creates):
		st.check = fmt.Sprintf("the scan has %d rows, %d expected", st.sinkRows, run.d.creates)
	case qty != run.d.qtySum():
		st.check = fmt.Sprintf("the scan has sum(qty) %d, %d expected", qty, run.d.qtySum())
	}
	if st.check != "" {
		b.logf("S %s: WARNING: %s", st.label, st.check)
	} else {
		b.logf("S %s: a scan has the %d expected rows (count and sum(qty) match)", st.label, st.sinkRows)
	}
	out, err := os.Create(filepath.Join(run.dir, "pqarrow-iceberg.parquet"))
	if err != nil {
		st.bulk = measure{err: err}
		return st
	}
	defer out.Close()
	start := time.Now()
	err = parquet.WriteTables(struct{ io.Writer }{out}, []arrow.Table{tab})
	if err == nil {
		err = out.Sync()
	}
	st.bulk = measure{took: time.Since(start), err: err}
	st.bulkRows = st.sinkRows
	b.logBulk(&st)
	return st
}

// readParquetFile reads a whole Parquet file into memory.
func readParquetFile(ctx context.Context, path string) (arrow.Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return pqarrow.ReadTable(ctx, f, nil, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
}

// startProfile starts a CPU profile into path; the returned func stops it.
func startProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// histogramSum sums the observations of every series of a histogram
// vector (seconds, for the apply-time histogram).
func histogramSum(c prometheus.Collector) float64 {
	return collectSum(c, func(m *dto.Metric) float64 { return m.GetHistogram().GetSampleSum() })
}
