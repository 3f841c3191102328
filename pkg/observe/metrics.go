// Package observe holds Tideline's logger, metrics and HTTP endpoints.
package observe

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the capture metrics, all prefixed tideline_. Labels are the
// pipeline, table and op: never keys or values, so cardinality is bounded by
// the number of captured tables. docs/metrics.md lists them.
type Metrics struct {
	Registry *prometheus.Registry

	Events          *prometheus.CounterVec   // pipeline, table, op
	SourceLagBytes  *prometheus.GaugeVec     // pipeline
	ConfirmedLSN    *prometheus.GaugeVec     // pipeline
	CheckpointTime  *prometheus.GaugeVec     // pipeline
	InFlightBytes   *prometheus.GaugeVec     // pipeline
	PublishLatency  *prometheus.HistogramVec // pipeline
	CommitToAck     *prometheus.HistogramVec // pipeline
	Errors          *prometheus.CounterVec   // pipeline, component
	SourceConnected *prometheus.GaugeVec     // pipeline
	SnapshotRows    *prometheus.CounterVec   // pipeline, table

	SinkRows          *prometheus.CounterVec   // sink, table, op
	SinkBatches       *prometheus.CounterVec   // sink
	SinkApply         *prometheus.HistogramVec // sink
	SinkCommitToApply *prometheus.HistogramVec // sink
	SinkLag           *prometheus.GaugeVec     // sink, table
	SinkDLQ           *prometheus.CounterVec   // sink, table
	SinkRetries       *prometheus.CounterVec   // sink

	SourceLagSeconds *prometheus.GaugeVec // pipeline
	InFlightBudget   *prometheus.GaugeVec // pipeline
	SinkUp           *prometheus.GaugeVec // sink
	EventStreams     prometheus.Gauge
	BuildInfo        *prometheus.GaugeVec // version
}

// NewMetrics registers the metrics (and the Go and process collectors) on a
// new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	latency := []float64{.001, .002, .005, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		Registry: r,
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tideline_events_total",
			Help: "Change events handed to the publisher, by table and op (c, u, d, r, t).",
		}, []string{"pipeline", "table", "op"}),
		SourceLagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tideline_source_lag_bytes",
			Help: "Bytes of source log between the server's current position and the last confirmed checkpoint.",
		}, []string{"pipeline"}),
		ConfirmedLSN: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tideline_source_confirmed_lsn",
			Help: "Last log position confirmed to the source (PostgreSQL LSN as a number).",
		}, []string{"pipeline"}),
		CheckpointTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tideline_checkpoint_timestamp_seconds",
			Help: "Unix time the checkpoint last moved.",
		}, []string{"pipeline"}),
		InFlightBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tideline_inflight_bytes",
			Help: "Encoded bytes handed to the publisher and not yet acknowledged by Kafka.",
		}, []string{"pipeline"}),
		PublishLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tideline_publish_latency_seconds",
			Help:    "Time from a batch's hand-off to the publisher to Kafka's acknowledgement of its last record.",
			Buckets: latency,
		}, []string{"pipeline"}),
		CommitToAck: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tideline_commit_to_ack_seconds",
			Help:    "Time from the source transaction's commit to Kafka's acknowledgement of its batch.",
			Buckets: latency,
		}, []string{"pipeline"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tideline_errors_total",
			Help: "Errors by component (source, publisher); each one is also logged.",
		}, []string{"pipeline", "component"}),
		SourceConnected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tideline_source_connected",
			Help: "1 while the source's replication connection is up.",
		}, []string{"pipeline"}),
		SnapshotRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tideline_snapshot_rows_total",
			Help: "Rows read by the initial snapshot, by table.",
		}, []string{"pipeline", "table"}),
	}
	m.SinkRows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tideline_sink_rows_total",
		Help: "Changes a sink applied to its target, by table and op (after folding per key: one per key and batch).",
	}, []string{"sink", "table", "op"})
	m.SinkBatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tideline_sink_batches_total",
		Help: "Batches a sink applied and committed.",
	}, []string{"sink"})
	m.SinkApply = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tideline_sink_apply_seconds",
		Help:    "Time to apply one table's part of a batch to the target, retries included.",
		Buckets: latency,
	}, []string{"sink"})
	m.SinkCommitToApply = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tideline_sink_commit_to_apply_seconds",
		Help:    "Time from the source transaction's commit to the sink's commit of the change to its target.",
		Buckets: latency,
	}, []string{"sink"})
	m.SinkLag = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tideline_sink_consumer_lag",
		Help: "Records in a table's topic that the sink has not applied yet (high watermark minus the sink's position, summed over partitions).",
	}, []string{"sink", "table"})
	m.SinkDLQ = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tideline_sink_dlq_records_total",
		Help: "Records a sink sent to its dead-letter topic because the target rejected them.",
	}, []string{"sink", "table"})
	m.SinkRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tideline_sink_retries_total",
		Help: "Transient apply failures a sink retried (each is also logged).",
	}, []string{"sink"})
	m.SourceLagSeconds = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tideline_source_lag_seconds",
		Help: "Seconds from the source commit of the last change Kafka acknowledged to that acknowledgement; 0 once nothing is in flight.",
	}, []string{"pipeline"})
	m.InFlightBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tideline_inflight_budget_bytes",
		Help: "capture.max_inflight_bytes: the most encoded bytes that wait for Kafka before reading pauses.",
	}, []string{"pipeline"})
	m.SinkUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tideline_sink_up",
		Help: "1 while a sink runs (consuming and applying), 0 once it stopped or failed.",
	}, []string{"sink"})
	m.EventStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tideline_http_event_streams",
		Help: "Clients connected to /api/events (the dashboard's live stream).",
	})
	m.BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tideline_build_info",
		Help: "Always 1; the version label is Tideline's version.",
	}, []string{"version"})
	r.MustRegister(m.SourceLagSeconds, m.InFlightBudget, m.SinkUp, m.EventStreams, m.BuildInfo)
	r.MustRegister(m.SinkRows, m.SinkBatches, m.SinkApply, m.SinkCommitToApply, m.SinkLag, m.SinkDLQ, m.SinkRetries)
	r.MustRegister(m.Events, m.SourceLagBytes, m.ConfirmedLSN, m.CheckpointTime, m.InFlightBytes,
		m.PublishLatency, m.CommitToAck, m.Errors, m.SourceConnected, m.SnapshotRows)
	return m
}
