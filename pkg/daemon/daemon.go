// Package daemon builds a running Tideline from a config: the embedded
// broker when asked for, the Kafka client, the source (through an explicit
// registry), the capture pipeline and the HTTP endpoints.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/pkg/capture"
	"github.com/tideline-cdc/tideline/pkg/checkpoint"
	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/kafka"
	"github.com/tideline-cdc/tideline/pkg/observe"
	"github.com/tideline-cdc/tideline/sources/mysql"
	"github.com/tideline-cdc/tideline/sources/postgres"
)

// Version is Tideline's version, stamped into every event's source.version.
// Release builds set it with -ldflags "-X …/pkg/daemon.Version=…".
var Version = "0.1.0-dev"

// Deps are what a source constructor may use.
type Deps struct {
	Config  *config.Config
	Store   checkpoint.Store
	Metrics *observe.Metrics
	Log     *zap.Logger
}

// SourceFactory builds a source from config.
type SourceFactory func(Deps) (capture.Source, error)

// Sources is the registry of source types, by source.type.
var Sources = map[string]SourceFactory{
	"postgres": newPostgres,
	"mysql":    newMySQL,
}

func newMySQL(d Deps) (capture.Source, error) {
	c := d.Config
	return mysql.New(mysql.Config{
		Name:           c.Kafka.TopicPrefix,
		DSN:            string(c.Source.DSN),
		Tables:         c.Source.Tables,
		Snapshot:       c.Source.Snapshot,
		ServerID:       c.Source.ServerID,
		TopicPrefix:    c.Kafka.TopicPrefix,
		Tombstones:     c.Kafka.TombstonesOn(),
		StatusInterval: c.Source.StatusInterval,
		BatchRecords:   c.Capture.BatchRecords,
		BatchBytes:     int(c.Capture.BatchBytes),
		Linger:         *c.Capture.Linger,
		Version:        Version,
	}, d.Store, d.Log.Named("mysql"), mysql.Gauges{
		LagBytes:  d.Metrics.SourceLagBytes.WithLabelValues(c.Name),
		Connected: d.Metrics.SourceConnected.WithLabelValues(c.Name),
	}), nil
}

func newPostgres(d Deps) (capture.Source, error) {
	c := d.Config
	name := c.Name
	return postgres.New(postgres.Config{
		Name:           c.Kafka.TopicPrefix,
		DSN:            string(c.Source.DSN),
		Tables:         c.Source.Tables,
		Snapshot:       c.Source.Snapshot,
		Slot:           c.Source.Slot,
		Publication:    c.Source.Publication,
		TopicPrefix:    c.Kafka.TopicPrefix,
		Tombstones:     c.Kafka.TombstonesOn(),
		StatusInterval: c.Source.StatusInterval,
		BatchRecords:   c.Capture.BatchRecords,
		BatchBytes:     int(c.Capture.BatchBytes),
		Linger:         *c.Capture.Linger,
		Version:        Version,
	}, d.Store, d.Log.Named("postgres"), postgres.Gauges{
		LagBytes:     d.Metrics.SourceLagBytes.WithLabelValues(name),
		ConfirmedLSN: d.Metrics.ConfirmedLSN.WithLabelValues(name),
		Connected:    d.Metrics.SourceConnected.WithLabelValues(name),
		SnapshotRows: func(table string) prometheus.Counter { return d.Metrics.SnapshotRows.WithLabelValues(name, table) },
	}), nil
}

// Options are optional hooks, for tests, benchmarks and the demo.
type Options struct {
	// OnAck is called for every delivered batch with a source commit time.
	OnAck func(commitMicros int64, ackAt time.Time)
	// Started is called once the HTTP server and broker are up, with the
	// HTTP address ("" when off) and the Kafka brokers in use.
	Started func(httpAddr string, brokers []string)
	// Metrics, when set, is used instead of a new registry.
	Metrics *observe.Metrics
	// Role is all (default), capture or sinks.
	Role string
	// Instance names this process among the members of the sinks'
	// consumer groups (static membership); default the host name. Two
	// processes running the same sinks need different ones.
	Instance string
}

// Roles split a config between processes.
const (
	RoleAll     = "all"     // capture and every sink (the default)
	RoleCapture = "capture" // the source and the publisher only
	RoleSinks   = "sinks"   // the sinks only, as consumer-group members
)

// Run runs what cfg describes in role o.Role (default all) until ctx is
// done (then it drains, confirms and returns nil) or a fatal error.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger, o Options) error {
	m := o.Metrics
	if m == nil {
		m = observe.NewMetrics()
	}
	m.BuildInfo.WithLabelValues(Version).Set(1)
	// The status page shows the last warnings and errors logged.
	recent := observe.NewRecent(20)
	log = log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, recent.Core()) }))
	started := time.Now()
	role := o.Role
	if role == "" {
		role = RoleAll
	}
	runCapture := role != RoleSinks && cfg.HasSource()
	runSinks := role != RoleCapture && len(cfg.Sinks) > 0
	switch {
	case role != RoleAll && role != RoleCapture && role != RoleSinks:
		return fmt.Errorf("role %q: use all, capture or sinks", role)
	case role == RoleCapture && !cfg.HasSource():
		return errors.New("role capture: the config has no source")
	case role == RoleSinks && len(cfg.Sinks) == 0:
		return errors.New("role sinks: the config has no sinks")
	case role == RoleSinks && cfg.Kafka.IsEmbedded():
		return errors.New("role sinks: kafka.brokers is [embedded], which runs in the capture process: list the brokers to read from")
	}
	instance := o.Instance
	if instance == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			instance = h
		} else {
			instance = "tideline"
		}
	}
	brokers := cfg.Kafka.Brokers
	var topicExtra map[string]string
	if cfg.Kafka.IsEmbedded() {
		emb, err := kafka.StartEmbedded(cfg.Kafka.Embedded, log)
		if err != nil {
			return err
		}
		defer emb.Close()
		brokers = emb.Addrs()
		topicExtra = kafka.TopicConfigs(cfg.Kafka.Embedded)
	}
	budget := int64(cfg.Capture.MaxInFlightBytes)
	cl, err := kafka.NewClient(cfg.Kafka, brokers, 2*budget+int64(cfg.Capture.BatchBytes), log)
	if err != nil {
		return err
	}
	defer cl.Close()
	topics := kafka.NewTopics(cl, cfg.Kafka.Topics, topicExtra)
	schemas := kafka.NewSchemas(cl, topics, cfg.Kafka.TopicPrefix+".schemas")

	var p *capture.Pipeline
	if runCapture {
		store := kafka.NewStore(cl, topics, cfg.Kafka.TopicPrefix+".offsets")
		factory, ok := Sources[cfg.Source.Type]
		if !ok {
			return fmt.Errorf("source.type %q is not known", cfg.Source.Type)
		}
		src, err := factory(Deps{Config: cfg, Store: store, Metrics: m, Log: log})
		if err != nil {
			return err
		}
		popts := []capture.Option{capture.WithSourceType(cfg.Source.Type), capture.WithTopicPrefix(cfg.Kafka.TopicPrefix)}
		if o.OnAck != nil {
			popts = append(popts, capture.WithAckHook(o.OnAck))
		}
		p = capture.New(cfg.Name, src, cl, topics, schemas, budget, m, log.Named("capture"), popts...)
	}
	var runtimes []*apply.Runtime
	var sinks []apply.Sink
	defer func() {
		for _, s := range sinks {
			_ = s.Close()
		}
	}()
	if runSinks {
		for i := range cfg.Sinks {
			sc := &cfg.Sinks[i]
			slog := log.Named("sink").With(zap.String("sink", sc.Name))
			factory, ok := SinkTypes[sc.Type]
			if !ok {
				return fmt.Errorf("sinks[%d].type %q is not known", i, sc.Type)
			}
			s, err := factory(ctx, SinkDeps{Config: cfg, Sink: sc, Log: slog})
			if err != nil {
				return err
			}
			sinks = append(sinks, s)
			runtimes = append(runtimes, apply.New(apply.Config{
				Sink: sc.Name, Type: sc.Type, Group: sc.Group, InstanceID: sc.Group + "-" + instance, TopicPrefix: cfg.Kafka.TopicPrefix, Tables: sc.Tables,
				DLQTopic:     cfg.Kafka.TopicPrefix + ".dlq." + sc.Name,
				BatchRecords: sc.BatchRecords, BatchBytes: int(sc.BatchBytes), Linger: sc.Linger,
			}, s, apply.Deps{
				Kafka:       []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ClientID(cfg.Kafka.ClientID + "-" + sc.Name)},
				Shape:       schemas.Table,
				EnsureTopic: topics.Ensure,
				Metrics:     m,
				Log:         slog,
			}))
		}
	}

	ready := func() error {
		if p != nil {
			return p.Ready(capture.StallAfter)
		}
		return nil
	}

	providers := observe.Providers{Sinks: func() []observe.SinkInfo {
		out := make([]observe.SinkInfo, 0, len(runtimes))
		for _, rt := range runtimes {
			out = append(out, rt.Info())
		}
		return out
	}}
	if p != nil {
		providers.Pipeline = p.Info
	}
	hub := observe.NewHub(m, providers, observe.Status{Name: cfg.Name, Version: Version, Role: role, StartedAt: started.UTC()}, recent)
	hub.LogStates(log.Named("status"))

	g, gctx := errgroup.WithContext(ctx)
	httpAddr := ""
	if cfg.HTTP.Listen != "off" {
		srv, err := observe.Listen(cfg.HTTP.Listen, m, ready, observe.ServerOptions{Hub: hub, Token: string(cfg.HTTP.Token)})
		if err != nil {
			return err
		}
		httpAddr = srv.Addr()
		g.Go(func() error { return srv.Serve(gctx) })
	}
	// The hub also logs state changes, so it runs without HTTP too.
	g.Go(func() error { return hub.Run(gctx) })
	log.Info("tideline starting", zap.String("name", cfg.Name), zap.String("version", Version), zap.String("role", role),
		zap.String("source", cfg.Source.Type), zap.Stringer("dsn", cfg.Source.DSN), zap.Int("sinks", len(runtimes)),
		zap.Strings("brokers", brokers), zap.String("http", httpAddr))
	if o.Started != nil {
		o.Started(httpAddr, brokers)
	}
	if p != nil {
		g.Go(func() error {
			err := p.Run(gctx)
			if err == nil && ctx.Err() == nil {
				err = errors.New("pipeline stopped")
			}
			// Stop the HTTP server and the sinks with the pipeline.
			return errStop{err}
		})
	}
	for _, rt := range runtimes {
		g.Go(func() error {
			err := rt.Run(gctx)
			if err == nil && ctx.Err() == nil {
				err = errors.New("sink stopped")
			}
			return errStop{err}
		})
	}
	err = g.Wait()
	var es errStop
	if errors.As(err, &es) {
		err = es.err
	}
	if err != nil {
		return err
	}
	log.Info("tideline stopped")
	return nil
}

// errStop carries the pipeline's result through errgroup, so that its end
// (even a clean one) cancels the other members.
type errStop struct{ err error }

func (e errStop) Error() string {
	if e.err == nil {
		return "stopped"
	}
	return e.err.Error()
}
