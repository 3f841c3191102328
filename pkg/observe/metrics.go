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
	r.MustRegister(m.Events, m.SourceLagBytes, m.ConfirmedLSN, m.CheckpointTime, m.InFlightBytes,
		m.PublishLatency, m.CommitToAck, m.Errors, m.SourceConnected, m.SnapshotRows)
	return m
}
