package sqlsink

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/tideline-cdc/tideline/internal/testenv"
	"github.com/tideline-cdc/tideline/pkg/apply"
	"github.com/tideline-cdc/tideline/sinks/sinktest"
)

func TestPostgresConformance(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PGOptions{})
	ctx := context.Background()
	if err := pg.CreateDB(ctx, "warehouse"); err != nil {
		t.Fatal(err)
	}
	dsn := pg.DSN("warehouse")
	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) apply.Sink {
			s, err := NewPostgres(ctx, Config{Name: "s", Type: "postgres", DSN: dsn}, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Rows: func(t *testing.T, schema, table string) []map[string]*string {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			return pgRows(t, conn, fmt.Sprintf("SELECT * FROM %s.%s", pgIdent(schema), pgIdent(table)))
		},
	})
}

// pgRows reads a query's rows as column -> text (nil for NULL).
func pgRows(t *testing.T, conn *pgx.Conn, q string) []map[string]*string {
	t.Helper()
	rows, err := conn.Query(context.Background(), q, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []map[string]*string
	for rows.Next() {
		raw := rows.RawValues()
		r := map[string]*string{}
		for i, fd := range rows.FieldDescriptions() {
			if raw[i] != nil {
				s := string(raw[i])
				r[fd.Name] = &s
			} else {
				r[fd.Name] = nil
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
