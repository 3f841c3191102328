package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// report is everything the run prints on stdout.
type report struct {
	facts     facts
	big       throughput
	bigBinary measure
	single    throughput
	latency   latency
	mysql     mysqlReport
	sinks     sinkReport

	heapPeak, heapEnd uint64 // Go heap in use, bytes
	vmHWM, vmRSS      uint64 // bytes
	took              time.Duration
}

func (r *report) print(w io.Writer, o options) {
	f := r.facts
	fmt.Fprintf(w, "\n## Tideline benchmark\n\n")
	fmt.Fprintf(w, "Measured %s by `go run ./cmd/tideline-bench` (`make bench`) in one run, side by side.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- Machine: %d CPUs (%s), GOMAXPROCS %d, %s; load average %s at start, %s at end\n",
		f.cpus, f.cpuModel, f.gomaxprocs, f.goVersion, f.loadStart, loadAvg())
	fmt.Fprintf(w, "- PostgreSQL: %s (fsync off, throwaway cluster); %s\n", f.pgVersion, f.recv)
	if m := r.mysql; m.ran {
		fmt.Fprintf(w, "- MariaDB: %s (binlog_format ROW, row image FULL, throwaway server, innodb_flush_log_at_trx_commit 0, sync_binlog 0); %s\n", m.version, m.binlogTool)
	}
	fmt.Fprintf(w, "- Kafka: in-process kfake broker in the same process as Tideline (acks=all, %s): it shares the %d CPUs and the Go heap with Tideline. pg_recvlogical and mariadb-binlog write to /dev/null.\n", o.compress, f.cpus)
	fmt.Fprintf(w, "- Each workload's readers use slots created at the same WAL position before the load; pg_recvlogical is timed to --endpos, Tideline until Kafka acknowledged every event")
	if o.rounds > 1 {
		fmt.Fprintf(w, "; the fastest of %d alternating rounds", o.rounds)
	}
	fmt.Fprintf(w, ".\n")
	if r.mysql.ran {
		fmt.Fprintf(w, "- MySQL workloads: both readers read the binlog range recorded (SHOW MASTER STATUS, @@gtid_binlog_pos) before and after the load; mariadb-binlog --read-from-remote-server is timed from its start to its exit at --stop-position, Tideline (started at the position before, written into its offsets topic) until Kafka acknowledged every event.\n")
	}
	fmt.Fprintln(w)

	if r.big.label != "" || r.single.label != "" {
		fmt.Fprintf(w, "| Workload | pg_recvlogical changes/s | Tideline changes/s | Ratio | Target | Met |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---|---|\n")
	}
	for _, t := range []throughput{r.big, r.single} {
		if t.label == "" {
			continue
		}
		if t.err != nil {
			fmt.Fprintf(w, "| %s | error | error | - | >= %.1fx | - |\n", t.label, t.target)
			continue
		}
		rr, tr := t.recv.rate(t.events), t.tl.rate(t.events)
		ratio, met := "-", "-"
		if rr > 0 && tr > 0 {
			ratio = fmt.Sprintf("%.2fx", tr/rr)
			met = yesNo(tr/rr >= t.target)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | >= %.1fx | %s |\n", t.label, rateCell(t.recv, t.events), rateCell(t.tl, t.events), ratio, t.target, met)
	}
	if !o.skipLat {
		l := r.latency
		fmt.Fprintf(w, "\n| Latency (commit -> Kafka ack) | Samples | Achieved tx/s | p50 | p99 | max | Target | Met |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---|---|\n")
		label := fmt.Sprintf("single-row tx, %d connections, %s after %s warm-up", l.workers, o.duration-o.warmup, o.warmup)
		target := fmt.Sprintf("p99 <= 25 ms at %s tx/s", thousands(l.rate))
		if l.err != nil || len(l.samples) == 0 {
			fmt.Fprintf(w, "| %s | error | %.0f | - | - | - | %s | - |\n", label, l.achieved(), target)
		} else {
			fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s | %s | %s |\n", label, thousands(len(l.samples)), l.achieved(),
				ms(l.pct(0.5)), ms(l.pct(0.99)), ms(l.pct(1)), target,
				yesNo(l.pct(0.99) <= 25*time.Millisecond && l.achieved() >= 0.95*float64(l.rate)))
		}
		if n := len(l.isolated); n > 0 {
			fmt.Fprintf(w, "| isolated single-row tx, one every %s (quiet database) | %d (%d tx) | - | %s | %s | %s | - | - |\n",
				isolatedGap, n, l.isolatedN, ms(pct(l.isolated, 0.5)), ms(pct(l.isolated, 0.99)), ms(l.isolated[n-1]))
		}
	}

	r.printMySQL(w, o)
	r.printSinks(w)

	if r.big.label != "" && r.big.err == nil {
		fmt.Fprintf(w, "\nFor the record (pg_recvlogical only, workload A, proto_version 1): text %s changes/s, binary=true %s changes/s",
			rateCell(r.big.recv, r.big.events), rateCell(r.bigBinary, r.big.events))
		if a, bb := r.big.recv.rate(r.big.events), r.bigBinary.rate(r.big.events); a > 0 && bb > 0 {
			fmt.Fprintf(w, " (binary/text %.2fx)", bb/a)
		}
		fmt.Fprintln(w, ".")
	}

	fmt.Fprintf(w, "\nDetails:\n\n")
	for _, t := range []throughput{r.big, r.single} {
		if t.label == "" {
			continue
		}
		if t.err != nil {
			fmt.Fprintf(w, "- %s: %v\n", t.label, t.err)
			continue
		}
		fmt.Fprintf(w, "- %s: load generated in %s (%.1f MiB of WAL); pg_recvlogical %s; Tideline %s%s\n",
			t.label, t.genTook.Round(time.Millisecond), float64(t.walBytes)/(1<<20), tookAll(t.recvRuns), tookAll(t.tlRuns), memNote(t.tl.mem))
	}
	if r.big.label != "" && r.big.err == nil {
		fmt.Fprintf(w, "- A, pg_recvlogical binary=true: %s\n", took(r.bigBinary))
	}
	if !o.skipLat {
		l := r.latency
		if l.err != nil {
			fmt.Fprintf(w, "- Latency: %v\n", l.err)
		}
		fmt.Fprintf(w, "- Latency: %d transactions committed in %s (%.1f tx/s, asked %d); %.0f events acked; %s batches measured after warm-up, a batch's latency being its oldest transaction's%s\n",
			l.committed, l.genTook.Round(time.Millisecond), l.achieved(), l.rate, l.events, thousands(len(l.samples)), memNote(l.mem))
	}
	r.printMySQLDetails(w)
	r.printSinkDetails(w)
	fmt.Fprintf(w, "- Memory of this process over the whole run (Tideline + the kfake broker holding each workload's records + load generators): peak RSS (VmHWM) %.0f MiB, RSS at end %.0f MiB; Go heap in use (HeapInuse; never-written pages of a span are not resident, so it can exceed RSS) peak %.0f MiB, at end %.0f MiB\n",
		mib(r.vmHWM), mib(r.vmRSS), mib(r.heapPeak), mib(r.heapEnd))
	fmt.Fprintf(w, "- Whole run: %s\n", r.took.Round(time.Second))
}

func memNote(p memPeak) string {
	if p.rss == 0 && p.heap == 0 {
		return ""
	}
	scope := "during the run"
	if !p.perPhase {
		scope = "process peak so far"
	}
	return fmt.Sprintf(", peak RSS %.0f MiB (%s), peak Go heap in use %.0f MiB", mib(p.rss), scope, mib(p.heap))
}

func rateCell(m measure, events int) string {
	if m.err != nil {
		return "error"
	}
	return thousands(int(m.rate(events) + 0.5))
}

func took(m measure) string {
	if m.err != nil {
		return "error: " + m.err.Error()
	}
	s := m.took.Round(time.Millisecond).String()
	if m.note != "" {
		s += " (" + m.note + ")"
	}
	return s
}

// tookAll lists every round's time (the table shows the fastest).
func tookAll(runs []measure) string {
	parts := make([]string, len(runs))
	for i, m := range runs {
		parts[i] = took(m)
	}
	if len(parts) == 0 {
		return "not run"
	}
	return strings.Join(parts, ", ")
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// thousands formats n with comma separators.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// printMySQL prints the MySQL workloads' table and the go-mysql figures.
func (r *report) printMySQL(w io.Writer, o options) {
	m := r.mysql
	if o.skipMySQL || (o.mysqlBig <= 0 && o.mysqlSingle <= 0) {
		return
	}
	fmt.Fprintf(w, "\n| MySQL workload (MariaDB binlog) | mariadb-binlog changes/s | Tideline changes/s | Ratio | Target | Met |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---|---|\n")
	if !m.ran || m.err != nil {
		why := m.skipped
		if m.err != nil {
			why = m.err.Error()
		}
		fmt.Fprintf(w, "| not run: %s | - | - | - | - | - |\n", strings.ReplaceAll(why, "|", "/"))
		return
	}
	for _, t := range []mysqlThroughput{m.big, m.single} {
		if t.label == "" {
			continue
		}
		target := "-"
		if t.targetRate > 0 {
			target = fmt.Sprintf(">= %sk changes/s", thousands(int(t.targetRate/1000)))
		}
		if t.err != nil {
			fmt.Fprintf(w, "| %s | error | error | - | %s | - |\n", t.label, target)
			continue
		}
		rr, tr := t.recv.rate(t.events), t.tl.rate(t.events)
		ratio, met := "-", "-"
		if rr > 0 && tr > 0 {
			ratio = fmt.Sprintf("%.2fx", tr/rr)
		}
		if t.targetRate > 0 && t.tl.err == nil {
			met = yesNo(tr >= t.targetRate)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", t.label, rateCell(t.recv, t.events), rateCell(t.tl, t.events), ratio, target, met)
	}
	fmt.Fprintf(w, "\nmariadb-binlog's default output copies row events as base64 BINLOG statements: it does not decode rows, which Tideline does (and converts, encodes and sends to Kafka). ")
	fmt.Fprintf(w, "For the record, other readers of the same binlog ranges, to /dev/null or nowhere: mariadb-binlog -v --base64-output=decode-rows (rows decoded into pseudo-SQL); go-mysql's BinlogSyncer, the library Tideline reads with, raw (RawModeEnabled, no decoding) and parsed (rows decoded):")
	for _, t := range []mysqlThroughput{m.big, m.single} {
		if t.label == "" || t.err != nil {
			continue
		}
		fmt.Fprintf(w, " %s: decode-rows %s, go-mysql raw %s, go-mysql parsed %s changes/s;", strings.SplitN(t.label, ":", 2)[0],
			rateCell(t.decoded, t.events), rateCell(t.goRaw, t.events), rateCell(t.goParsed, t.events))
	}
	fmt.Fprintln(w)
}

// printMySQLDetails prints the MySQL workloads' detail lines.
func (r *report) printMySQLDetails(w io.Writer) {
	m := r.mysql
	if !m.ran {
		if m.skipped != "" {
			fmt.Fprintf(w, "- MySQL workloads skipped: %s\n", m.skipped)
		}
		return
	}
	if m.err != nil {
		fmt.Fprintf(w, "- MySQL workloads: %v\n", m.err)
		return
	}
	for _, t := range []mysqlThroughput{m.big, m.single} {
		if t.label == "" {
			continue
		}
		if t.err != nil {
			fmt.Fprintf(w, "- %s: %v\n", t.label, t.err)
			continue
		}
		fmt.Fprintf(w, "- %s: load generated in %s (%.0f transactions/s, %.1f MiB of binlog), binlog %s .. %s; mariadb-binlog %s, with decode-rows %s; go-mysql raw %s, parsed %s; Tideline %s%s\n",
			t.label, t.genTook.Round(time.Millisecond), float64(txCount(t))/t.genTook.Seconds(),
			float64(t.walBytes)/(1<<20), t.before, t.after, tookAll(t.recvRuns), took(t.decoded), took(t.goRaw), took(t.goParsed), tookAll(t.tlRuns), memNote(t.tl.mem))
	}
}

// txCount is the number of transactions a MySQL workload generated.
func txCount(t mysqlThroughput) int {
	if s0, s1 := gtidSeq(t.before.GTID), gtidSeq(t.after.GTID); s0 >= 0 && s1 > s0 {
		return int(s1 - s0)
	}
	return 0
}

// printSinks prints workload S's table.
func (r *report) printSinks(w io.Writer) {
	s := r.sinks
	if !s.ran {
		return
	}
	fmt.Fprintf(w, "\nSinks: %s changes (%s inserts, %s updates) applied from Kafka (%d partitions) by the sink runtime with each sink's default batches (PostgreSQL and MariaDB: batch_records %d, batch_bytes %d MiB; DuckDB: %d, %d MiB; linger %s), ",
		thousands(s.changes), thousands(s.creates), thousands(s.updates), sinkPartitions, s.settings.BatchRecords, s.settings.BatchBytes>>20,
		s.duckSettings.BatchRecords, s.duckSettings.BatchBytes>>20, s.settings.Linger)
	fmt.Fprintf(w, "each target from offset 0 in a fresh consumer group, timed from the runtime's start until the group committed the end of every partition; ")
	fmt.Fprintf(w, "beside it, the target's own bulk load of the %s resulting rows from a CSV file into a fresh table with the same columns and primary key (no _tideline_ columns). ", thousands(s.creates))
	fmt.Fprintf(w, "Ratio = sink changes/s / bulk rows/s. The targets run on this machine and share its %d CPUs with the sink and the broker.\n\n", r.facts.cpus)
	fmt.Fprintf(w, "| Target | Sink changes/s (time) | Bulk load rows/s (time) | Ratio | Target | Met |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---|---|\n")
	if s.err != nil {
		fmt.Fprintf(w, "| not run: %s | - | - | - | - | - |\n", strings.ReplaceAll(s.err.Error(), "|", "/"))
		return
	}
	for _, t := range s.targets {
		if t.lake {
			continue
		}
		target := fmt.Sprintf(">= %.1fx", sinkMinRatio)
		if t.minRate > 0 {
			target = fmt.Sprintf(">= %s changes/s, >= %.1fx", thousands(int(t.minRate)), sinkMinRatio)
		}
		label := t.label
		if t.version != "" {
			v, _, _ := strings.Cut(strings.Fields(t.version)[0], "-")
			label += " " + v
		}
		if t.skipped != "" || t.err != nil {
			why := t.skipped
			if t.err != nil {
				why = t.err.Error()
			}
			fmt.Fprintf(w, "| %s: not run: %s | - | - | - | %s | - |\n", label, strings.ReplaceAll(why, "|", "/"), target)
			continue
		}
		sr, br := t.sink.rate(s.changes), t.bulk.rate(s.creates)
		ratio := "-"
		var met []string
		if sr > 0 && t.minRate > 0 {
			met = append(met, "rate "+yesNo(sr >= t.minRate))
		}
		if sr > 0 && br > 0 {
			ratio = fmt.Sprintf("%.2fx", sr/br)
			if t.minRate > 0 {
				met = append(met, "ratio "+yesNo(sr/br >= sinkMinRatio))
			} else {
				met = append(met, yesNo(sr/br >= sinkMinRatio))
			}
		}
		metCell := "-"
		if len(met) > 0 {
			metCell = strings.Join(met, ", ")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", label, rateTook(t.sink, s.changes), rateTook(t.bulk, s.creates)+", "+t.bulkHow, ratio, target, metCell)
	}
	r.printLakeSinks(w)
	for _, t := range s.targets {
		if t.check != "" {
			fmt.Fprintf(w, "\nWARNING: %s: %s.\n", t.label, t.check)
		}
	}
}

// printLakeSinks prints the lake targets of workload S: every change is a
// row, beside pqarrow writing the same rows from memory (the ratio shows
// what the runtime costs: Kafka, decoding, conversion).
func (r *report) printLakeSinks(w io.Writer) {
	s := r.sinks
	var lake []sinkTarget
	for _, t := range s.targets {
		if t.lake {
			lake = append(lake, t)
		}
	}
	if len(lake) == 0 {
		return
	}
	set := sinkSettings("parquet", 0)
	fmt.Fprintf(w, "\nLake sinks: the same %s changes from offset 0 in a fresh consumer group (batch_records %d, batch_bytes %d MiB, linger %s: the default linger, %s, would wait that long after the last record), "+
		"timed until the group committed everything. Parquet writes every change as a row (a change log); Iceberg applies them to a table (one row delta per batch, %s rows at the end). "+
		"Beside each, pqarrow writing the same rows from memory (Parquet: the sink's files read back; Iceberg: a scan of the table) to one file with the change log's writer settings (zstd). "+
		"Ratio = sink changes/s / pqarrow rows/s: what Kafka, decoding, conversion and the table format cost.\n\n",
		thousands(s.changes), set.BatchRecords, set.BatchBytes>>20, lakeBenchLinger, set.Linger, thousands(s.creates))
	fmt.Fprintf(w, "| Target | Sink changes/s (time) | pqarrow from memory rows/s (time) | Ratio | Files |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|\n")
	for _, t := range lake {
		if t.skipped != "" || t.err != nil {
			why := t.skipped
			if t.err != nil {
				why = t.err.Error()
			}
			fmt.Fprintf(w, "| %s: not run: %s | - | - | - | - |\n", t.label, strings.ReplaceAll(why, "|", "/"))
			continue
		}
		sr, br := t.sink.rate(s.changes), t.bulk.rate(int(t.bulkRows))
		ratio := "-"
		if sr > 0 && br > 0 {
			ratio = fmt.Sprintf("%.2fx", sr/br)
		}
		files := "-"
		if t.files >= 0 {
			files = strconv.Itoa(t.files)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", t.label, rateTook(t.sink, s.changes), rateTook(t.bulk, int(t.bulkRows)), ratio, files)
	}
}

// rateTook is "rate (time)" for a table cell.
func rateTook(m measure, n int) string {
	if m.err != nil {
		return "error"
	}
	r := 10 * time.Millisecond
	if m.took < time.Second {
		r = time.Millisecond
	}
	return fmt.Sprintf("%s (%s)", rateCell(m, n), m.took.Round(r))
}

// printSinkDetails prints workload S's detail lines.
func (r *report) printSinkDetails(w io.Writer) {
	s := r.sinks
	if !s.ran {
		return
	}
	if s.err != nil {
		fmt.Fprintf(w, "- S: %v\n", s.err)
		return
	}
	fmt.Fprintf(w, "- S: %s change records (%.1f MiB of keys and values, creates in transactions of %d, updates of random ids one a transaction) produced before timing in %s; CSV of the %s final rows (%.1f MiB) written in %s\n",
		thousands(s.changes), float64(s.kafkaBytes)/(1<<20), sinkTxRows, s.produceTook.Round(time.Millisecond), thousands(s.creates), float64(s.csvBytes)/(1<<20), s.csvTook.Round(time.Millisecond))
	for _, t := range s.targets {
		if t.skipped != "" || t.err != nil {
			continue
		}
		fmt.Fprintf(w, "- S %s: sink %s", t.label, took(t.sink))
		if t.sink.err == nil {
			fmt.Fprintf(w, ", %.0f batches, %.1f s inside Sink.Apply (%.0f%% of the run)", t.batches, t.applySecs, 100*t.applySecs/t.sink.took.Seconds())
			fmt.Fprintf(w, ", %s rows in the table at the end", thousands(int(t.sinkRows)))
			switch {
			case t.check == "" && t.lake && t.files >= 0:
				fmt.Fprintf(w, " (each change once; the newest per id gives the expected sum(qty))")
			case t.check == "":
				fmt.Fprintf(w, " (count and sum(qty) as expected)")
			default:
				fmt.Fprintf(w, " (WARNING: %s)", t.check)
			}
			fmt.Fprintf(w, "%s; bulk load (%s) %s, %s rows", memNote(t.sink.mem), t.bulkHow, took(t.bulk), thousands(int(t.bulkRows)))
		}
		fmt.Fprintln(w)
	}
}
