// Command tideline streams database changes into Kafka.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tideline-cdc/tideline/pkg/config"
	"github.com/tideline-cdc/tideline/pkg/daemon"
	"github.com/tideline-cdc/tideline/pkg/observe"
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
	root.AddCommand(runCmd(), validateCmd(), versionCmd(), duckdbCmd())
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

func duckdbCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "duckdb --path FILE QUERY",
		Short: "Run a read-only SQL query on a DuckDB warehouse file (e.g. a duckdb sink's) and print the result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return sqlsink.QueryDuckDB(cmd.Context(), path, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "the DuckDB database file")
	_ = cmd.MarkFlagRequired("path")
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
