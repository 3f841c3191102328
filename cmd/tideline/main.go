// Command tideline streams database changes into Kafka.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
	icebergsink "github.com/tideline-cdc/tideline/sinks/iceberg"
	sqlsink "github.com/tideline-cdc/tideline/sinks/sql"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tideline:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tideline",
		Short:         "Stream PostgreSQL and MySQL changes into Kafka, loss-free and checkpointed, and apply them to warehouses",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), validateCmd(), versionCmd(), duckdbCmd(), statusCmd(), icebergCmd(), previewCmd())
	return root
}

func runCmd() *cobra.Command {
	var path, role, instance string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the pipeline until SIGINT/SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			log, err := observe.NewLogger(cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return daemon.Run(ctx, cfg, log, daemon.Options{Role: role, Instance: instance})
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "tideline.yaml", "config file")
	cmd.Flags().StringVar(&role, "role", daemon.RoleAll, "what to run: all (capture and sinks), capture, or sinks (consumer-group members; add instances to scale out)")
	cmd.Flags().StringVar(&instance, "instance", "", "this process's name among its sinks' group members (default: the host name); two processes running the same sinks need different ones")
	return cmd
}

func statusCmd() *cobra.Command {
	var url, token string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a running Tideline's status (its /api/status) as tables, or as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/api/status", nil)
			if err != nil {
				return fmt.Errorf("--url %q: %w", url, err)
			}
			if token == "" {
				token = os.Getenv("TIDELINE_HTTP_TOKEN")
			}
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("no Tideline answers at %s (is it running, and is --url its http.listen?): %w", url, err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("read %s: %w", req.URL, err)
			}
			switch {
			case resp.StatusCode == http.StatusUnauthorized:
				return fmt.Errorf("%s needs the token (http.token): pass --token or set TIDELINE_HTTP_TOKEN", req.URL)
			case resp.StatusCode != http.StatusOK:
				return fmt.Errorf("%s: %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(append(body, '\n'))
				return err
			}
			var st observe.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("%s did not answer a status: %w", req.URL, err)
			}
			return observe.PrintStatus(cmd.OutOrStdout(), &st)
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://127.0.0.1:8080", "the running Tideline's HTTP address (its http.listen)")
	// Not a flag default: cobra would print the token in --help.
	cmd.Flags().StringVar(&token, "token", "", "http.token, when the server has one (default: $TIDELINE_HTTP_TOKEN)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON (docs/status.md)")
	return cmd
}

func duckdbCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "duckdb [--path FILE] QUERY",
		Short: "Run a read-only SQL query on a DuckDB warehouse file (a duckdb sink's), or with no file on Parquet change logs (read_parquet), and print the result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sqlsink.QueryDuckDB(cmd.Context(), path, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&path, "path", sqlsink.InMemory, "the DuckDB database file (default: none, an in-memory database for queries over files)")
	return cmd
}

func validateCmd() *cobra.Command {
	var path string
	var offline bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config file and print every problem with its key path",
		Long: "Check a config file and print every problem with its key path. With CRM sinks (hubspot, salesforce, webhook) it also " +
			"reads the captured tables' columns from the source database (read-only) and compiles each field mapping against them: " +
			"an unknown column or a transform on the wrong type is a problem. --offline skips that.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			var ps config.Problems
			if errors.As(err, &ps) {
				for _, p := range ps {
					fmt.Fprintln(cmd.OutOrStdout(), p.String())
				}
				return fmt.Errorf("%s: %d problem(s)", path, len(ps))
			}
			if err != nil {
				return err
			}
			if hasCRM(cfg) && !offline && cfg.HasSource() {
				samples, err := daemon.Sample(cmd.Context(), cfg, 0)
				if err != nil {
					return fmt.Errorf("%s: read the captured tables to check the CRM mappings (--offline skips this): %w", path, err)
				}
				if ps := daemon.CheckMappings(cfg, samples); len(ps) > 0 {
					for _, p := range ps {
						fmt.Fprintln(cmd.OutOrStdout(), p.String())
					}
					return fmt.Errorf("%s: %d problem(s)", path, len(ps))
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "tideline.yaml", "config file")
	cmd.Flags().BoolVar(&offline, "offline", false, "do not read the source's tables (CRM mappings are then checked for syntax only)")
	return cmd
}

func hasCRM(cfg *config.Config) bool {
	for i := range cfg.Sinks {
		if cfg.Sinks[i].IsCRM() {
			return true
		}
	}
	return false
}

func previewCmd() *cobra.Command {
	var path, sink string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "preview --config FILE --sink NAME [--limit N]",
		Short: "Print exactly what a CRM sink would send for current source rows, without sending anything",
		Long: "Read up to --limit current rows of each table the sink applies from the source database (read-only), map them as the " +
			"sink does, batch them, and print the requests it would send (method, URL, headers without credentials, JSON body). " +
			"Nothing is sent.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if !cfg.HasSource() {
				return fmt.Errorf("%s has no source to read rows from", path)
			}
			samples, err := daemon.Sample(cmd.Context(), cfg, limit)
			if err != nil {
				return err
			}
			if ps := daemon.CheckMappings(cfg, samples); len(ps) > 0 {
				return ps
			}
			tables, err := daemon.Preview(cmd.Context(), cfg, sink, samples)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				type request struct {
					Method string              `json:"method"`
					URL    string              `json:"url"`
					Header map[string][]string `json:"header,omitempty"`
					Body   json.RawMessage     `json:"body,omitempty"`
					Note   string              `json:"note,omitempty"`
				}
				type table struct {
					Table    string    `json:"table"`
					Rows     int       `json:"rows"`
					Requests []request `json:"requests"`
				}
				out := make([]table, 0, len(tables))
				for _, t := range tables {
					tt := table{Table: t.Table, Rows: t.Rows, Requests: []request{}}
					for _, r := range t.Requests {
						tt.Requests = append(tt.Requests, request{Method: r.Method, URL: r.URL, Header: r.Header, Body: r.Body, Note: r.Note})
					}
					out = append(out, tt)
				}
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			for _, t := range tables {
				fmt.Fprintf(w, "# %s: %d rows -> %d requests\n", t.Table, t.Rows, len(t.Requests))
				for _, r := range t.Requests {
					fmt.Fprintf(w, "\n%s %s\n", r.Method, r.URL)
					for _, k := range sortedKeys(r.Header) {
						fmt.Fprintf(w, "%s: %s\n", k, strings.Join(r.Header[k], ", "))
					}
					if len(r.Body) > 0 {
						var pretty bytes.Buffer
						if json.Indent(&pretty, r.Body, "", "  ") == nil {
							fmt.Fprintf(w, "\n%s\n", pretty.String())
						} else {
							fmt.Fprintf(w, "\n%s\n", r.Body)
						}
					}
					if r.Note != "" {
						fmt.Fprintf(w, "(%s)\n", r.Note)
					}
				}
				fmt.Fprintln(w)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "tideline.yaml", "config file")
	cmd.Flags().StringVar(&sink, "sink", "", "the CRM sink's name")
	cmd.Flags().IntVar(&limit, "limit", 10, "rows read from each table")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the requests as JSON")
	_ = cmd.MarkFlagRequired("sink")
	return cmd
}

func sortedKeys(h map[string][]string) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "tideline", daemon.Version)
		},
	}
}

func icebergCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "iceberg", Short: "Maintain the Iceberg tables an iceberg sink writes"}
	var path, sink, table string
	var opts icebergsink.CompactOptions
	compact := &cobra.Command{
		Use:   "compact --config FILE --sink NAME [--table ns.table]",
		Short: "Rewrite small data files with their delete files applied, drop delete files that no longer apply, expire old snapshots",
		Long: "Rewrite small data files with their delete files applied, drop delete files that no longer apply, expire old snapshots " +
			"and delete the files only they used. It may run while the sink writes: a rewrite that a concurrent commit invalidates " +
			"fails and is retried by running compact again (e.g. from cron).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			var sc *config.Sink
			for i := range cfg.Sinks {
				if cfg.Sinks[i].Name == sink {
					sc = &cfg.Sinks[i]
				}
			}
			if sc == nil || sc.Type != "iceberg" {
				return fmt.Errorf("%s has no iceberg sink named %q", path, sink)
			}
			res, err := icebergsink.Compact(cmd.Context(), daemon.IcebergConfig(sc), table, opts)
			for _, r := range res {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: data files %d -> %d, delete files %d -> %d, %d rewritten, %d snapshots expired",
					r.Table, r.DataFilesBefore, r.DataFilesAfter, r.DeleteFilesBefore, r.DeleteFilesAfter, r.Rewritten, r.SnapshotsExpired)
				if r.Skipped != "" {
					fmt.Fprintf(cmd.OutOrStdout(), " (%s)", r.Skipped)
				}
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return err
		},
	}
	compact.Flags().StringVarP(&path, "config", "c", "tideline.yaml", "config file")
	compact.Flags().StringVar(&sink, "sink", "", "the iceberg sink's name")
	compact.Flags().StringVar(&table, "table", "", "one table (namespace.table); default every table in the catalog")
	compact.Flags().Int64Var(&opts.TargetFileSize, "target-file-size", 0, "bytes of a rewritten data file (default 128 MiB)")
	compact.Flags().IntVar(&opts.MinInputFiles, "min-input-files", 0, "small files a table needs before they are rewritten (default 2)")
	compact.Flags().IntVar(&opts.DeleteFileThreshold, "delete-file-threshold", 0, "delete files that make any data file a candidate (default 5)")
	compact.Flags().IntVar(&opts.RetainSnapshots, "retain-snapshots", 0, "newest snapshots always kept (default 1)")
	compact.Flags().DurationVar(&opts.ExpireOlderThan, "expire-older-than", 0, "expire snapshots older than this, beyond the retained ones (default 24h; negative: none)")
	_ = compact.MarkFlagRequired("sink")
	cmd.AddCommand(compact)
	return cmd
}
