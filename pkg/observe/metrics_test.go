package observe

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsLint(t *testing.T) {
	m := NewMetrics()
	touch(t, m)
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

// TestMetricsDocumented checks that docs/metrics.md lists every metric with
// its type and labels, and nothing that does not exist.
func TestMetricsDocumented(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	type doc struct{ typ, labels string }
	documented := map[string]doc{}
	for _, line := range strings.Split(string(raw), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`tideline_") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		documented[name] = doc{strings.TrimSpace(cells[2]), strings.ReplaceAll(strings.TrimSpace(cells[3]), " ", "")}
	}
	m := NewMetrics()
	descs := make(chan *prometheus.Desc, 100)
	go func() { m.Registry.Describe(descs); close(descs) }()
	seen := map[string]bool{}
	fams := map[string]string{}
	for _, f := range mustGatherAll(t, m) {
		fams[f.GetName()] = strings.ToLower(f.GetType().String())
	}
	for d := range descs {
		s := d.String() // Desc{fqName: "…", help: "…", constLabels: {…}, variableLabels: {…}}
		name := between(s, `fqName: "`, `"`)
		if !strings.HasPrefix(name, "tideline_") {
			continue
		}
		seen[name] = true
		labels := strings.ReplaceAll(strings.Trim(between(s, "variableLabels: {", "}"), " "), " ", "")
		dd, ok := documented[name]
		if !ok {
			t.Errorf("%s is not in docs/metrics.md", name)
			continue
		}
		if dd.labels != labels {
			t.Errorf("%s: docs say labels %q, the metric has %q", name, dd.labels, labels)
		}
		if typ, ok := fams[name]; !ok {
			t.Errorf("%s was not gathered", name)
		} else if typ != dd.typ {
			t.Errorf("%s: docs say %s, the metric is a %s", name, dd.typ, typ)
		}
	}
	for name := range documented {
		if !seen[name] {
			t.Errorf("docs/metrics.md lists %s, which does not exist", name)
		}
	}
}

func between(s, from, to string) string {
	i := strings.Index(s, from)
	if i < 0 {
		return ""
	}
	s = s[i+len(from):]
	if j := strings.Index(s, to); j >= 0 {
		return s[:j]
	}
	return s
}

// mustGatherAll gathers the families that have samples (vectors touched).
func mustGatherAll(t *testing.T, m *Metrics) []*dto.MetricFamily {
	t.Helper()
	touch(t, m)
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// touch gives every metric of m a sample, so that it is gathered: every
// field of Metrics, found by reflection (a new field cannot be forgotten
// here), with as many label values as its description has labels.
func touch(t *testing.T, m *Metrics) {
	t.Helper()
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i).Interface()
		c, ok := f.(prometheus.Collector)
		if _, reg := f.(*prometheus.Registry); !ok || reg {
			continue
		}
		descs := make(chan *prometheus.Desc, 1)
		c.Describe(descs)
		d := (<-descs).String()
		labels := between(d, "variableLabels: {", "}")
		vals := []string{}
		if labels != "" {
			for range strings.Split(labels, ",") {
				vals = append(vals, "x")
			}
		}
		switch x := f.(type) {
		case *prometheus.CounterVec:
			x.WithLabelValues(vals...).Inc()
		case *prometheus.GaugeVec:
			x.WithLabelValues(vals...).Set(1)
		case *prometheus.HistogramVec:
			x.WithLabelValues(vals...).Observe(1)
		case prometheus.Gauge:
			x.Set(1)
		default:
			t.Fatalf("Metrics.%s: touch does not know %T", v.Type().Field(i).Name, f)
		}
	}
}
