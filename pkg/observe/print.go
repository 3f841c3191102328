package observe

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// PrintStatus writes st as tables for people (tideline status).
func PrintStatus(w io.Writer, st *Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\tv%s, role %s, up %s\tstate: %s\n", st.Name, st.Version, st.Role,
		st.Now.Sub(st.StartedAt).Round(time.Second), st.State)
	if p := st.Pipeline; p != nil {
		fmt.Fprintf(tw, "\nCAPTURE (%s)\t%s\t%s\n", p.Source, p.State, p.Reason)
		age := "never"
		if p.CheckpointAt != nil {
			age = fmt.Sprintf("%.0fs ago", p.CheckpointAge)
		}
		fmt.Fprintf(tw, "  checkpoint\t%s (moved %s)\n", orDash(p.Checkpoint), age)
		fmt.Fprintf(tw, "  source lag\t%s, %.1f s\n", humanBytes(p.LagBytes), p.LagSeconds)
		fmt.Fprintf(tw, "  in flight\t%s of %s\n", humanBytes(p.InFlightBytes), humanBytes(p.InFlightBudget))
		fmt.Fprintf(tw, "  changes\t%.0f (%.1f/s)\n", total(p.Changes), p.Rate)
		if len(p.Tables) > 0 {
			fmt.Fprintf(tw, "  TABLE\tINSERTS\tUPDATES\tDELETES\tSNAPSHOT\tTRUNCATES\tPER SEC\n")
			for _, t := range p.Tables {
				c := t.Counts
				fmt.Fprintf(tw, "  %s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\n", t.Name, c["c"], c["u"], c["d"], c["r"], c["t"], t.Rate)
			}
		}
	}
	for _, s := range st.Sinks {
		fmt.Fprintf(tw, "\nSINK %s (%s, group %s)\t%s\t%s\n", s.Name, s.Type, s.Group, s.State, s.Reason)
		last := "never"
		if s.LastBatchAt != nil {
			last = fmt.Sprintf("%.0fs ago", st.Now.Sub(*s.LastBatchAt).Seconds())
		}
		fmt.Fprintf(tw, "  rows applied\t%.0f (%.1f/s), last batch %s\n", total(s.Rows), s.Rate, last)
		fmt.Fprintf(tw, "  consumer lag\t%.0f records\n", s.Lag)
		fmt.Fprintf(tw, "  dead-lettered\t%.0f\tretries %.0f\n", s.DLQ, s.Retries)
		if len(s.Tables) > 0 {
			fmt.Fprintf(tw, "  TABLE\tINSERTS\tUPDATES\tDELETES\tLAG\tDLQ\tPER SEC\n")
			for _, t := range s.Tables {
				c := t.Counts
				lag := 0.0
				if t.Lag != nil {
					lag = *t.Lag
				}
				fmt.Fprintf(tw, "  %s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\n", t.Name, c["c"]+c["r"], c["u"], c["d"], lag, t.DLQ, t.Rate)
			}
		}
	}
	if len(st.Errors) > 0 {
		fmt.Fprintf(tw, "\nRECENT WARNINGS AND ERRORS\n")
		for _, e := range st.Errors {
			msg := e.Message
			if e.Error != "" {
				msg += ": " + e.Error
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.Time.Local().Format("15:04:05"), e.Level, e.Component, msg)
		}
	}
	return tw.Flush()
}

func total(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
