// Command tideline streams database changes into Kafka.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
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
	root.AddCommand(runCmd(), validateCmd(), versionCmd(), duckdbCmd(), statusCmd(), icebergCmd())
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
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config file and print every problem with its key path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := config.Load(path)
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
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "tideline.yaml", "config file")
	return cmd
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
