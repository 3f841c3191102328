package observe

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsLint(t *testing.T) {
	m := NewMetrics()
	// Touch every vector so it is gathered.
	m.Events.WithLabelValues("p", "public.t", "c").Inc()
	m.SourceLagBytes.WithLabelValues("p").Set(1)
	m.ConfirmedLSN.WithLabelValues("p").Set(1)
	m.CheckpointTime.WithLabelValues("p").Set(1)
	m.InFlightBytes.WithLabelValues("p").Set(1)
	m.PublishLatency.WithLabelValues("p").Observe(1)
	m.CommitToAck.WithLabelValues("p").Observe(1)
	m.Errors.WithLabelValues("p", "source").Inc()
	m.SourceConnected.WithLabelValues("p").Set(1)
	m.SnapshotRows.WithLabelValues("p", "public.t").Inc()
	m.SinkRows.WithLabelValues("s", "public.t", "c").Inc()
	m.SinkBatches.WithLabelValues("s").Inc()
	m.SinkApply.WithLabelValues("s").Observe(1)
	m.SinkCommitToApply.WithLabelValues("s").Observe(1)
	m.SinkLag.WithLabelValues("s", "public.t").Set(1)
	m.SinkDLQ.WithLabelValues("s", "public.t").Inc()
	m.SinkRetries.WithLabelValues("s").Inc()
	m.SourceLagSeconds.WithLabelValues("p").Set(1)
	m.InFlightBudget.WithLabelValues("p").Set(1)
	m.SinkUp.WithLabelValues("s").Set(1)
	m.EventStreams.Set(1)
	m.BuildInfo.WithLabelValues("v").Set(1)
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func mustGather(t *testing.T, m *Metrics) []*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []*dto.MetricFamily
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "tideline_") {
			out = append(out, f)
		}
	}
	return out
}
