package icebergsink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	"github.com/apache/iceberg-go/table"
	"github.com/apache/iceberg-go/table/compaction"
)

// ScanRows reads every row of the table namespace.name with an iceberg-go
// scan (its deletes applied), as column name -> value: int64 for int and
// long columns, float64, bool, string, []byte, a decimal as its text,
// time.Time (UTC) for dates and timestamps, time.Duration for times; nil
// for null. The _tideline_ columns are included.
func ScanRows(ctx context.Context, cfg Config, namespace, name string) ([]map[string]any, error) {
	cat, closeCat, err := open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer closeCat()
	tbl, err := cat.LoadTable(ctx, table.Identifier{namespace, name})
	if err != nil {
		return nil, err
	}
	return scanAll(ctx, tbl)
}

// ScanTable reads the table namespace.name with an iceberg-go scan (its
// deletes applied) into memory as an Arrow table; the caller releases it.
func ScanTable(ctx context.Context, cfg Config, namespace, name string) (arrow.Table, error) {
	cat, closeCat, err := open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer closeCat()
	tbl, err := cat.LoadTable(ctx, table.Identifier{namespace, name})
	if err != nil {
		return nil, err
	}
	return tbl.Scan().ToArrowTable(ctx)
}

func scanAll(ctx context.Context, tbl *table.Table) ([]map[string]any, error) {
	out := []map[string]any{}
	if tbl.CurrentSnapshot() == nil {
		return out, nil
	}
	sc := tbl.Schema()
	_, recs, err := tbl.Scan().ToArrowRecords(ctx)
	if err != nil {
		return nil, err
	}
	for rec, err := range recs {
		if err != nil {
			return nil, err
		}
		for row := range int(rec.NumRows()) {
			m := make(map[string]any, rec.NumCols())
			for c, f := range rec.Schema().Fields() {
				var typ iceberg.Type
				if sf, ok := sc.FindFieldByName(f.Name); ok {
					typ = sf.Type
				}
				m[f.Name] = plain(readValue(rec.Column(c), row), typ)
			}
			out = append(out, m)
		}
		rec.Release()
	}
	return out, nil
}

// open opens cfg's catalog for a one-off use.
func open(ctx context.Context, cfg Config) (*sqlcat.Catalog, func(), error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, nil, err
	}
	cat, db, err := openCatalog(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return cat, func() {
		cat.Close() //nolint:errcheck // read-only use: nothing to lose
		db.Close()  //nolint:errcheck
	}, nil
}

// CompactOptions tunes Compact. Zero values take the defaults.
type CompactOptions struct {
	// TargetFileSize is the size data files are rewritten to. Default
	// 128 MiB.
	TargetFileSize int64
	// MinInputFiles is how many small files a table (partition) must
	// have before they are rewritten. Default 2.
	MinInputFiles int
	// DeleteFileThreshold makes a data file of any size a candidate once
	// this many delete files apply to it. Default 5.
	DeleteFileThreshold int
	// RetainSnapshots is how many of the newest snapshots expiry keeps
	// whatever their age. Default 1.
	RetainSnapshots int
	// ExpireOlderThan expires snapshots older than this (beyond the
	// RetainSnapshots newest). Default 24 h; negative: expire none.
	ExpireOlderThan time.Duration
}

func (o CompactOptions) withDefaults() CompactOptions {
	if o.TargetFileSize <= 0 {
		o.TargetFileSize = 128 << 20
	}
	if o.MinInputFiles <= 0 {
		o.MinInputFiles = 2
	}
	if o.DeleteFileThreshold <= 0 {
		o.DeleteFileThreshold = 5
	}
	if o.RetainSnapshots <= 0 {
		o.RetainSnapshots = 1
	}
	if o.ExpireOlderThan == 0 {
		o.ExpireOlderThan = 24 * time.Hour
	}
	return o
}

// CompactResult is what Compact did to one table.
type CompactResult struct {
	Table string
	// DataFiles and DeleteFiles are the table's live file counts before
	// and after.
	DataFilesBefore, DataFilesAfter     int
	DeleteFilesBefore, DeleteFilesAfter int
	// Rewritten is the number of data files rewritten; Skipped says why
	// none were, when none were.
	Rewritten int
	Skipped   string
	// SnapshotsExpired is how many snapshots expiry removed.
	SnapshotsExpired int
}

// Compact rewrites the small data files of a table (namespace.table), or
// of every table in the catalog (name ""), into files of the target size
// with their deletes applied, removes the delete files that no longer
// apply to any live file, then expires old snapshots and deletes the
// files only they referenced.
//
// It may run while the sink writes: iceberg-go rejects a rewrite that a
// concurrent commit adding equality deletes would invalidate (the result
// has the error, and running Compact again retries), and the sink retries
// its own commits that conflict with a rewrite. The sink's offsets live
// in a table property, which compaction and expiry leave alone.
func Compact(ctx context.Context, cfg Config, name string, opts CompactOptions) ([]CompactResult, error) {
	opts = opts.withDefaults()
	cat, closeCat, err := open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer closeCat()

	var idents []table.Identifier
	if name != "" {
		ns, t, ok := strings.Cut(name, ".")
		if !ok || ns == "" || t == "" {
			return nil, fmt.Errorf("table %q: want namespace.table", name)
		}
		idents = append(idents, table.Identifier{ns, t})
	} else {
		nss, err := cat.ListNamespaces(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
		for _, ns := range nss {
			for id, err := range cat.ListTables(ctx, ns) {
				if err != nil {
					return nil, fmt.Errorf("list tables of %s: %w", strings.Join(ns, "."), err)
				}
				idents = append(idents, id)
			}
		}
	}
	var out []CompactResult
	var errs []error
	for _, id := range idents {
		r, err := compactTable(ctx, cat, id, opts)
		out = append(out, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", strings.Join(id, "."), err))
		}
	}
	return out, errors.Join(errs...)
}

func compactTable(ctx context.Context, cat catalog.Catalog, id table.Identifier, opts CompactOptions) (CompactResult, error) {
	res := CompactResult{Table: strings.Join(id, ".")}
	tbl, err := cat.LoadTable(ctx, id)
	if err != nil {
		return res, err
	}
	res.DataFilesBefore, res.DeleteFilesBefore = fileCounts(tbl)
	res.DataFilesAfter, res.DeleteFilesAfter = res.DataFilesBefore, res.DeleteFilesBefore
	snap := tbl.CurrentSnapshot()
	if snap == nil {
		res.Skipped = "no snapshot"
		return res, nil
	}

	cc := compaction.DefaultConfig()
	cc.TargetFileSizeBytes = opts.TargetFileSize
	cc.MinFileSizeBytes = opts.TargetFileSize * 3 / 4
	cc.MaxFileSizeBytes = opts.TargetFileSize * 9 / 5
	cc.MinInputFiles = uint(opts.MinInputFiles)
	cc.DeleteFileThreshold = opts.DeleteFileThreshold
	plan, err := compaction.Analyze(ctx, tbl, cc)
	if err != nil {
		return res, fmt.Errorf("plan the rewrite: %w", err)
	}
	if len(plan.Groups) == 0 {
		res.Skipped = "no file needs a rewrite"
	} else {
		groups := make([]table.CompactionTaskGroup, len(plan.Groups))
		rewritten := map[string]struct{}{}
		for i, g := range plan.Groups {
			groups[i] = table.CompactionTaskGroup{PartitionKey: g.PartitionKey, Tasks: g.Tasks, TotalSizeBytes: g.TotalSizeBytes}
			for _, t := range g.Tasks {
				rewritten[t.File.FilePath()] = struct{}{}
			}
		}
		fs, err := tbl.FS(ctx)
		if err != nil {
			return res, err
		}
		// Equality deletes that apply to no file once these are
		// rewritten (the new files get a newer sequence number) go in
		// the same commit.
		dead, err := compaction.CollectDeadEqualityDeletesWithSpecs(ctx, fs, tbl.Metadata(), snap, rewritten)
		if err != nil {
			return res, fmt.Errorf("find dead equality deletes: %w", err)
		}
		props := iceberg.Properties{}
		if v, ok := tbl.Properties()[propOffsets]; ok {
			props[propOffsets] = v
		}
		rr, err := tbl.RewriteDataFiles(ctx, groups, table.RewriteDataFilesOptions{
			SnapshotProps:            props,
			ExtraDeleteFilesToRemove: dead,
			GroupOptions:             []table.CompactionGroupOption{table.WithCompactionTargetFileSize(opts.TargetFileSize)},
		})
		if err != nil {
			return res, fmt.Errorf("rewrite: %w", err)
		}
		res.Rewritten = rr.RemovedDataFiles
		if rr.Table != nil {
			tbl = rr.Table
		}
	}

	if opts.ExpireOlderThan > 0 {
		before := len(tbl.Metadata().Snapshots())
		tx := tbl.NewTransaction()
		if err := tx.ExpireSnapshots(table.WithRetainLast(opts.RetainSnapshots), table.WithOlderThan(opts.ExpireOlderThan)); err != nil {
			return res, fmt.Errorf("expire snapshots: %w", err)
		}
		t2, err := tx.Commit(ctx)
		if err != nil {
			return res, fmt.Errorf("expire snapshots: %w", err)
		}
		tbl = t2
		res.SnapshotsExpired = before - len(tbl.Metadata().Snapshots())
	}
	res.DataFilesAfter, res.DeleteFilesAfter = fileCounts(tbl)
	return res, nil
}

// fileCounts reads the live data and delete file counts from the current
// snapshot's summary.
func fileCounts(tbl *table.Table) (data, deletes int) {
	snap := tbl.CurrentSnapshot()
	if snap == nil || snap.Summary == nil {
		return 0, 0
	}
	data, _ = strconv.Atoi(snap.Summary.Properties["total-data-files"])
	deletes, _ = strconv.Atoi(snap.Summary.Properties["total-delete-files"])
	return data, deletes
}
