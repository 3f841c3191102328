package observe

import (
	"context"
	"encoding/json"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// The states of a pipeline or a sink, worst last.
const (
	StateRunning    = "running"
	StateCatchingUp = "catching up"
	StateStalled    = "stalled"
	StateFailed     = "failed"
)

func stateRank(s string) int {
	switch s {
	case StateRunning:
		return 0
	case StateCatchingUp:
		return 1
	case StateStalled:
		return 2
	case StateFailed:
		return 3
	}
	return 0
}

// Status is the answer of /api/status and the data of /api/events (see
// docs/status.md): what flows, how far behind each part is, and what went
// wrong. It never holds a secret: no DSN, no token, no row value.
type Status struct {
	Name      string          `json:"name"`
	Version   string          `json:"version"`
	Role      string          `json:"role"`
	StartedAt time.Time       `json:"started_at"`
	Now       time.Time       `json:"now"`
	State     string          `json:"state"`
	Pipeline  *PipelineStatus `json:"pipeline"`
	Sinks     []SinkStatus    `json:"sinks"`
	Errors    []ErrorEntry    `json:"errors"`
}

// PipelineStatus is the capture side.
type PipelineStatus struct {
	Name         string     `json:"name"`
	Source       string     `json:"source"`
	State        string     `json:"state"`
	Reason       string     `json:"reason,omitempty"`
	Checkpoint   string     `json:"checkpoint"`
	CheckpointAt *time.Time `json:"checkpoint_at"`
	// CheckpointAge is the seconds since the checkpoint last moved.
	CheckpointAge  float64            `json:"checkpoint_age_seconds"`
	LagBytes       float64            `json:"source_lag_bytes"`
	LagSeconds     float64            `json:"source_lag_seconds"`
	InFlightBytes  float64            `json:"inflight_bytes"`
	InFlightBudget float64            `json:"inflight_budget_bytes"`
	Changes        map[string]float64 `json:"changes"`
	Rate           float64            `json:"rate"`
	Tables         []TableStatus      `json:"tables"`
}

// SinkStatus is one sink.
type SinkStatus struct {
	Name        string             `json:"name"`
	Type        string             `json:"type"`
	Group       string             `json:"group"`
	State       string             `json:"state"`
	Reason      string             `json:"reason,omitempty"`
	LastBatchAt *time.Time         `json:"last_batch_at"`
	Rows        map[string]float64 `json:"rows"`
	Rate        float64            `json:"rate"`
	Lag         float64            `json:"consumer_lag"`
	DLQ         float64            `json:"dlq_records"`
	Retries     float64            `json:"retries"`
	Tables      []TableStatus      `json:"tables"`
}

// TableStatus is one table of a pipeline or a sink.
type TableStatus struct {
	Name string `json:"name"`
	// Counts are changes captured (pipeline) or rows applied (sink), by
	// op.
	Counts map[string]float64 `json:"counts"`
	// Rate is per second over the last 10 seconds.
	Rate float64 `json:"rate"`
	// History holds per-second rates, one point per 5 seconds, oldest
	// first, for the last 10 minutes at most.
	History []float64 `json:"history"`
	Lag     *float64  `json:"consumer_lag,omitempty"`
	DLQ     float64   `json:"dlq_records,omitempty"`
}

// ErrorEntry is one recent warning or error from the logs.
type ErrorEntry struct {
	Time      time.Time `json:"time"`
	Level     string    `json:"level"`
	Component string    `json:"component"`
	Message   string    `json:"message"`
	Error     string    `json:"error,omitempty"`
}

// PipelineInfo is what the capture pipeline tells the hub beyond metrics.
type PipelineInfo struct {
	Name, Source string
	// State and Reason: StateRunning, StateCatchingUp, StateStalled or
	// StateFailed, and why when not running.
	State, Reason string
	Checkpoint    string
	CheckpointAt  time.Time
}

// SinkInfo is what a sink runtime tells the hub beyond metrics.
type SinkInfo struct {
	Name, Type, Group string
	State, Reason     string
	LastBatchAt       time.Time
}

// Providers feed the hub; nil funcs are skipped.
type Providers struct {
	Pipeline func() *PipelineInfo
	Sinks    func() []SinkInfo
}

// Hub computes the status once a second and hands the latest to every
// reader (the /api endpoints, the event streams), so the cost does not grow
// with the number of clients.
type Hub struct {
	m       *Metrics
	p       Providers
	base    Status
	recent  *Recent
	mu      sync.Mutex
	latest  []byte
	wake    chan struct{} // closed and replaced on every update
	series  map[string]*series
	history time.Duration
	five    time.Time // when the last 5-second point was taken
	log     *zap.Logger
	states  map[string]string // "pipeline x" / "sink y" -> last state
}

// LogStates makes the hub log one line each time a pipeline or a sink
// changes state (not once per event, nor once per update).
func (h *Hub) LogStates(log *zap.Logger) {
	h.mu.Lock()
	h.log = log
	h.mu.Unlock()
}

// noteState logs a change of what's state. h.mu is held.
func (h *Hub) noteState(what, state, reason string) {
	if h.states == nil {
		h.states = map[string]string{}
	}
	prev, seen := h.states[what]
	h.states[what] = state
	if h.log == nil || (seen && prev == state) || (!seen && state == StateRunning) {
		return
	}
	fields := []zap.Field{zap.String("part", what), zap.String("state", state), zap.String("was", prev)}
	if reason != "" {
		fields = append(fields, zap.String("reason", reason))
	}
	if state == StateRunning {
		h.log.Info("state changed", fields...)
	} else {
		h.log.Warn("state changed", fields...)
	}
}

// series keeps one counter's recent values.
type series struct {
	secs    [11]float64 // value at each of the last 11 ticks (1 s apart)
	n       int
	points  []float64 // rates, one per 5 s
	last5   float64   // value at the last 5 s point
	seen5   bool
	touched bool
}

// NewHub returns a hub over m's registry. base holds the fixed fields
// (name, version, role, started_at); recent, when set, supplies the errors.
func NewHub(m *Metrics, p Providers, base Status, recent *Recent) *Hub {
	h := &Hub{m: m, p: p, base: base, recent: recent, wake: make(chan struct{}), series: map[string]*series{}, history: 10 * time.Minute}
	h.update(time.Now())
	return h
}

// Run updates the status every second until ctx is done.
func (h *Hub) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			h.update(now)
		}
	}
}

// Latest returns the newest status as JSON and a channel closed at the
// next update.
func (h *Hub) Latest() ([]byte, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.latest, h.wake
}

// metric samples of one family, by label set.
type sample struct {
	labels map[string]string
	value  float64
}

func gather(reg *prometheus.Registry) map[string][]sample {
	fams, err := reg.Gather()
	out := map[string][]sample{}
	if err != nil && len(fams) == 0 {
		return out
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.value = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.value = m.GetGauge().GetValue()
			default:
				continue
			}
			out[f.GetName()] = append(out[f.GetName()], s)
		}
	}
	return out
}

// tick records a counter's value and returns its rate over the last 10 s.
func (h *Hub) tick(key string, v float64, five bool) (rate float64, hist []float64) {
	s := h.series[key]
	if s == nil {
		s = &series{}
		h.series[key] = s
	}
	s.touched = true
	s.secs[s.n%len(s.secs)] = v
	s.n++
	if s.n > 1 {
		back := min(s.n-1, len(s.secs)-1)
		old := s.secs[(s.n-1-back)%len(s.secs)]
		rate = math.Max(0, (v-old)/float64(back))
	}
	if five {
		if s.seen5 {
			s.points = append(s.points, math.Max(0, (v-s.last5)/5))
			if max := int(h.history / (5 * time.Second)); len(s.points) > max {
				s.points = s.points[len(s.points)-max:]
			}
		}
		s.last5, s.seen5 = v, true
	}
	return rate, append([]float64(nil), s.points...)
}

func (h *Hub) update(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	five := now.Sub(h.five) >= 5*time.Second-100*time.Millisecond
	if five {
		h.five = now
	}
	for _, s := range h.series {
		s.touched = false
	}
	g := gather(h.m.Registry)
	st := h.base
	st.Now = now.UTC()
	st.State = StateRunning
	st.Sinks = []SinkStatus{}
	st.Errors = []ErrorEntry{}
	if h.recent != nil {
		st.Errors = h.recent.Entries()
	}
	// One family's samples of a pipeline or sink, per table.
	tables := func(family, who, name, prefix string) map[string]*TableStatus {
		out := map[string]*TableStatus{}
		for _, s := range g[family] {
			if s.labels[who] != name {
				continue
			}
			t := out[s.labels["table"]]
			if t == nil {
				t = &TableStatus{Name: s.labels["table"], Counts: map[string]float64{}}
				out[t.Name] = t
			}
			t.Counts[s.labels["op"]] += s.value
		}
		for _, t := range out {
			var sum float64
			for _, v := range t.Counts {
				sum += v
			}
			t.Rate, t.History = h.tick(prefix+t.Name, sum, five)
		}
		return out
	}
	one := func(family, who, name string) float64 {
		var v float64
		for _, s := range g[family] {
			if s.labels[who] == name {
				v += s.value
			}
		}
		return v
	}
	sorted := func(m map[string]*TableStatus) []TableStatus {
		out := make([]TableStatus, 0, len(m))
		for _, t := range m {
			out = append(out, *t)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out
	}
	if h.p.Pipeline != nil {
		if pi := h.p.Pipeline(); pi != nil {
			ps := &PipelineStatus{Name: pi.Name, Source: pi.Source, State: pi.State, Reason: pi.Reason, Checkpoint: pi.Checkpoint,
				LagBytes: one("tideline_source_lag_bytes", "pipeline", pi.Name), LagSeconds: one("tideline_source_lag_seconds", "pipeline", pi.Name),
				InFlightBytes: one("tideline_inflight_bytes", "pipeline", pi.Name), InFlightBudget: one("tideline_inflight_budget_bytes", "pipeline", pi.Name),
				Changes: map[string]float64{}}
			if !pi.CheckpointAt.IsZero() {
				at := pi.CheckpointAt.UTC()
				ps.CheckpointAt = &at
				ps.CheckpointAge = now.Sub(at).Seconds()
			}
			ts := tables("tideline_events_total", "pipeline", pi.Name, "p/")
			for _, t := range ts {
				ps.Rate += t.Rate
				for op, v := range t.Counts {
					ps.Changes[op] += v
				}
			}
			ps.Tables = sorted(ts)
			st.Pipeline = ps
			h.noteState("pipeline "+ps.Name, ps.State, ps.Reason)
			if stateRank(ps.State) > stateRank(st.State) {
				st.State = ps.State
			}
		}
	}
	if h.p.Sinks != nil {
		for _, si := range h.p.Sinks() {
			ss := SinkStatus{Name: si.Name, Type: si.Type, Group: si.Group, State: si.State, Reason: si.Reason, Rows: map[string]float64{},
				Retries: one("tideline_sink_retries_total", "sink", si.Name)}
			if !si.LastBatchAt.IsZero() {
				at := si.LastBatchAt.UTC()
				ss.LastBatchAt = &at
			}
			ts := tables("tideline_sink_rows_total", "sink", si.Name, "s/"+si.Name+"/")
			for _, s := range g["tideline_sink_consumer_lag"] {
				if s.labels["sink"] != si.Name {
					continue
				}
				t := ts[s.labels["table"]]
				if t == nil {
					t = &TableStatus{Name: s.labels["table"], Counts: map[string]float64{}}
					ts[t.Name] = t
				}
				lag := s.value
				t.Lag = &lag
				ss.Lag += lag
			}
			for _, s := range g["tideline_sink_dlq_records_total"] {
				if s.labels["sink"] != si.Name {
					continue
				}
				if t := ts[s.labels["table"]]; t != nil {
					t.DLQ += s.value
				}
				ss.DLQ += s.value
			}
			for _, t := range ts {
				ss.Rate += t.Rate
				for op, v := range t.Counts {
					ss.Rows[op] += v
				}
			}
			ss.Tables = sorted(ts)
			st.Sinks = append(st.Sinks, ss)
			h.noteState("sink "+ss.Name, ss.State, ss.Reason)
			if stateRank(ss.State) > stateRank(st.State) {
				st.State = ss.State
			}
		}
	}
	for k, s := range h.series {
		if !s.touched {
			delete(h.series, k) // a table gone (its *Table replaced, a sink removed)
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	h.latest = b
	close(h.wake)
	h.wake = make(chan struct{})
}
