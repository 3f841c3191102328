package daemon

import (
	"context"

	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/objstore"
	"github.com/tideline-cdc/tideline/sinks/crm/hubspot"
	"github.com/tideline-cdc/tideline/sinks/crm/salesforce"
	"github.com/tideline-cdc/tideline/sinks/crm/webhook"
	icebergsink "github.com/tideline-cdc/tideline/sinks/iceberg"
	"github.com/tideline-cdc/tideline/sinks/parquet"
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
	"hubspot": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return hubspot.New(d.Sink.HubSpot(), d.Log)
	},
	"salesforce": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return salesforce.New(d.Sink.Salesforce(), d.Log)
	},
	"webhook": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return webhook.New(d.Sink.Webhook(), d.Log)
	},
	"iceberg": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return icebergsink.New(ctx, IcebergConfig(d.Sink), d.Log)
	},
	"parquet": func(ctx context.Context, d SinkDeps) (apply.Sink, error) {
		return parquet.New(ctx, parquet.Config{Name: d.Sink.Name, Path: d.Sink.Path, S3: s3Options(d.Sink.S3)}, d.Log)
	},
}

// IcebergConfig is an iceberg sink's settings for sinks/iceberg.
func IcebergConfig(s *config.Sink) icebergsink.Config {
	c := icebergsink.Config{Name: s.Name, Catalog: string(s.Catalog), Warehouse: s.Warehouse, SoftDelete: s.SoftDelete, CompactEvery: max(s.CompactEvery, 0)}
	if s.S3 != nil {
		c.S3 = icebergsink.S3Config{Endpoint: s.S3.Endpoint, Region: s.S3.Region, AccessKeyID: s.S3.AccessKeyID,
			SecretAccessKey: string(s.S3.SecretAccessKey), SessionToken: string(s.S3.SessionToken)}
		if s.S3.PathStyle {
			c.S3.PathStyle = &s.S3.PathStyle
		}
	}
	return c
}

// s3Options are a sink's s3 settings for pkg/objstore.
func s3Options(s *config.S3) objstore.Options {
	if s == nil {
		return objstore.Options{}
	}
	return objstore.Options{Endpoint: s.Endpoint, Region: s.Region, PathStyle: s.PathStyle,
		AccessKeyID: s.AccessKeyID, SecretAccessKey: string(s.SecretAccessKey), SessionToken: string(s.SessionToken)}
}

func warehouse(s *config.Sink) sqlsink.Config {
	return sqlsink.Config{Name: s.Name, Type: s.Type, DSN: string(s.DSN), Path: s.Path,
		TableFormat: s.TableFormat, SoftDelete: s.SoftDelete, KeepOpen: s.KeepOpenOn()}
}
