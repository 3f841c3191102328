package daemon

import (
	"context"

	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/config"
	sqlsink "github.com/tideline-cdc/tideline/sinks/sql"
)

// SinkDeps are what a sink constructor may use.
type SinkDeps struct {
	Config *config.Config
	Sink   *config.Sink
	Log    *zap.Logger
}

// SinkFactory builds a sink from its config.
type SinkFactory func(context.Context, SinkDeps) (apply.Sink, error)

// SinkTypes is the registry of sink types, by sinks[].type.
var SinkTypes = map[string]SinkFactory{
	"postgres": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return sqlsink.NewPostgres(ctx, warehouse(d.Sink), d.Log)
	},
	"mysql": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return sqlsink.NewMySQL(ctx, warehouse(d.Sink), d.Log)
	},
	"duckdb": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return sqlsink.NewDuckDB(ctx, warehouse(d.Sink), d.Log)
	},
}

func warehouse(s *config.Sink) sqlsink.Config {
	return sqlsink.Config{Name: s.Name, Type: s.Type, DSN: string(s.DSN), Path: s.Path,
		TableFormat: s.TableFormat, SoftDelete: s.SoftDelete, KeepOpen: s.KeepOpenOn()}
}
