package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/sinks/crm"
	"github.com/tideline-cdc/tideline/sources/mysql"
	"github.com/tideline-cdc/tideline/sources/postgres"
)

// Sample reads the shape and up to limit current rows of every table the
// config captures, from the source database (read-only; no slot, no lock).
func Sample(ctx context.Context, cfg *config.Config, limit int) ([]change.Sample, error) {
	c := cfg.Source
	switch c.Type {
	case "postgres":
		return postgres.Sample(ctx, postgres.Config{DSN: string(c.DSN), Tables: c.Tables, TopicPrefix: cfg.Kafka.TopicPrefix}, limit)
	case "mysql":
		return mysql.Sample(ctx, mysql.Config{DSN: string(c.DSN), Tables: c.Tables, TopicPrefix: cfg.Kafka.TopicPrefix}, limit)
	}
	return nil, fmt.Errorf("source.type %q: no source to read tables from", c.Type)
}

// sinkTables returns the samples of the tables a sink applies.
func sinkTables(cfg *config.Config, sc *config.Sink, samples []change.Sample) []change.Sample {
	var res []*regexp.Regexp
	for _, r := range apply.TopicRegexes(cfg.Kafka.TopicPrefix, sc.Tables) {
		res = append(res, regexp.MustCompile(r))
	}
	var out []change.Sample
	for _, s := range samples {
		for _, re := range res {
			if re.MatchString(s.Table.Topic) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// CheckMappings compiles every CRM sink's mapping against the columns of
// each table it applies, as read from the source: an unknown column or a
// transform on the wrong type is a problem with its key path.
func CheckMappings(cfg *config.Config, samples []change.Sample) config.Problems {
	var ps config.Problems
	for i := range cfg.Sinks {
		sc := &cfg.Sinks[i]
		if !sc.IsCRM() {
			continue
		}
		tables := sinkTables(cfg, sc, samples)
		if len(tables) == 0 {
			ps = append(ps, config.Problem{Path: fmt.Sprintf("sinks[%d].tables", i), Msg: "matches none of the captured tables"})
		}
		for _, t := range tables {
			if _, err := crm.Compile(sc.Mapping(), t.Table); err != nil {
				var cps crm.Problems
				if errors.As(err, &cps) {
					for _, p := range cps {
						ps = append(ps, config.Problem{Path: fmt.Sprintf("sinks[%d].%s", i, p.Key), Msg: t.Table.Label() + ": " + p.Msg})
					}
					continue
				}
				ps = append(ps, config.Problem{Path: fmt.Sprintf("sinks[%d]", i), Msg: t.Table.Label() + ": " + err.Error()})
			}
		}
	}
	return ps
}

// Previewer is a sink that can show the requests it would send.
type Previewer interface {
	Preview(*apply.TableBatch) ([]crm.Request, error)
}

// TablePreview is what a CRM sink would send for one table's sampled rows.
type TablePreview struct {
	Table    string
	Rows     int
	Requests []crm.Request
}

// Preview builds the CRM sink named sink and returns, table by table, the
// requests it would send for the sampled rows (as snapshot rows), without
// sending anything.
func Preview(ctx context.Context, cfg *config.Config, sink string, samples []change.Sample) ([]TablePreview, error) {
	var sc *config.Sink
	for i := range cfg.Sinks {
		if cfg.Sinks[i].Name == sink {
			sc = &cfg.Sinks[i]
		}
	}
	if sc == nil {
		return nil, fmt.Errorf("no sink named %q in the config", sink)
	}
	if !sc.IsCRM() {
		return nil, fmt.Errorf("sink %s is of type %s: preview shows what hubspot, salesforce and webhook sinks send", sink, sc.Type)
	}
	s, err := SinkTypes[sc.Type](ctx, SinkDeps{Config: cfg, Sink: sc, Log: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	pv, ok := s.(Previewer)
	if !ok {
		return nil, fmt.Errorf("sink %s cannot preview", sink)
	}
	var out []TablePreview
	for _, smp := range sinkTables(cfg, sc, samples) {
		maps := make([]map[string]any, len(smp.Rows))
		for n, row := range smp.Rows {
			m := make(map[string]any, len(row))
			for i, v := range row {
				if v.Kind == change.Present {
					m[smp.Table.Columns[i].Name] = json.RawMessage(v.JSON)
				} else {
					m[smp.Table.Columns[i].Name] = json.RawMessage("null")
				}
			}
			maps[n] = m
		}
		rows, err := crm.Rows(smp.Table, maps)
		if err != nil {
			return nil, err
		}
		reqs, err := pv.Preview(&apply.TableBatch{Table: smp.Table, Topic: smp.Table.Topic, Rows: rows})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", smp.Table.Label(), err)
		}
		out = append(out, TablePreview{Table: smp.Table.Label(), Rows: len(rows), Requests: reqs})
	}
	return out, nil
}
