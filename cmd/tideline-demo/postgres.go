package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/internal/testenv"
)

// postgresDB is the demo on PostgreSQL, make demo's default.
var postgresDB = database{
	title:      "PostgreSQL",
	sourceType: "postgres",
	tables:     []string{"public.customers", "public.orders"},
	stopping:   "confirming the slot",
	packages:   "demo",
	makeCmd:    "make demo",
	sql:        &postgresSQL,
	start: func(ctx context.Context, log *zap.Logger) (server, error) {
		log.Info("starting a throwaway PostgreSQL server (initdb in a temp dir, wal_level=logical)")
		pg, err := testenv.StartPostgres(ctx, testenv.PGOptions{Logf: log.Sugar().Infof})
		if err != nil {
			return nil, err
		}
		return pgServer{pg}, nil
	},
}

var postgresSQL = shopSQL{
	schema: []string{`
CREATE TABLE public.customers (
	id         bigserial PRIMARY KEY,
	email      text NOT NULL,
	name       text NOT NULL,
	country    text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz
);

CREATE TABLE public.orders (
	id          bigserial PRIMARY KEY,
	customer_id bigint NOT NULL REFERENCES public.customers,
	status      text NOT NULL,
	total       numeric(12,2) NOT NULL,
	items       jsonb NOT NULL,
	created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.customers (email, name, country)
SELECT 'customer' || i || '@example.com',
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Ken','Margaret','Dennis'])[1 + i % 8] || ' ' ||
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Thompson','Hamilton','Ritchie'])[1 + (i / 8) % 8],
       (ARRAY['DE','FR','GB','NL','US','JP','BR','IN'])[1 + i % 8]
FROM generate_series(1, 50) AS i;

INSERT INTO public.orders (customer_id, status, total, items)
SELECT 1 + i % 50,
       (ARRAY['pending','paid','shipped','delivered'])[1 + i % 4],
       round((5 + random() * 200)::numeric, 2),
       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (100 + i % 17), 'qty', 1 + i % 3))
FROM generate_series(1, 120) AS i;
`},
	maxCustomer:    `SELECT coalesce(max(id), 0) FROM public.customers`,
	maxOrder:       `SELECT coalesce(max(id), 0) FROM public.orders`,
	countCustomer:  `SELECT count(*) FROM public.customers WHERE id = $1`,
	insertCustomer: `INSERT INTO public.customers (email, name, country) VALUES ($1, $2, $3) RETURNING id`,
	// The items go in as text and become jsonb in the server, whatever pgx would make of a Go
	// string bound to a jsonb parameter.
	insertOrder: `INSERT INTO public.orders (customer_id, status, total, items)
		VALUES ($1, 'pending', round($2::numeric, 2), $3::text::jsonb) RETURNING id`,
	advanceOrder: `UPDATE public.orders SET status = CASE status
		WHEN 'pending' THEN 'paid' WHEN 'paid' THEN 'shipped' ELSE 'delivered' END
		WHERE id = $1 AND status <> 'delivered'`,
	updateCustomer: `UPDATE public.customers SET country = $1, updated_at = now() WHERE id = $2`,
	cancelOrder:    `DELETE FROM public.orders WHERE id = $1 AND status IN ('pending', 'paid')`,
	deleteOrders:   `DELETE FROM public.orders WHERE customer_id = $1`,
	deleteCustomer: `DELETE FROM public.customers WHERE id = $1`,
}

// pgServer is a throwaway PostgreSQL server; the shop lives in database postgres.
type pgServer struct{ pg *testenv.Postgres }

var _ server = pgServer{}

func (s pgServer) dsn() string { return s.pg.DSN("postgres") }
func (s pgServer) shell() string {
	return fmt.Sprintf("psql 'postgres://postgres@127.0.0.1:%d/postgres'", s.pg.Port())
}
func (s pgServer) dir() string { return s.pg.Dir() }
func (s pgServer) stop() error { return s.pg.Stop() }

func (s pgServer) connect(ctx context.Context) (shopConn, error) {
	conn, err := pgx.Connect(ctx, s.dsn())
	if err != nil {
		return nil, err
	}
	return pgConn{conn}, nil
}

// pgConn is a shopConn on pgx. Statements run on the connection itself: inside tx's function
// that is the open transaction, as pgx's Tx is only BEGIN and COMMIT on the same connection.
type pgConn struct{ conn *pgx.Conn }

var _ shopConn = pgConn{}

func (c pgConn) tx(ctx context.Context, fn func() error) error {
	return pgx.BeginFunc(ctx, c.conn, func(pgx.Tx) error { return fn() })
}

func (c pgConn) exec(ctx context.Context, q string, args ...any) error {
	_, err := c.conn.Exec(ctx, q, args...)
	return err
}

func (c pgConn) queryInt(ctx context.Context, q string, args ...any) (int64, error) {
	var n int64
	err := c.conn.QueryRow(ctx, q, args...).Scan(&n)
	return n, err
}

// insert expects q to end in RETURNING id.
func (c pgConn) insert(ctx context.Context, q string, args ...any) (int64, error) {
	return c.queryInt(ctx, q, args...)
}

// close uses a context of its own: it also runs after the workload's was cancelled, and the
// Terminate message it sends is what lets the server end the session at once.
func (c pgConn) close() { _ = c.conn.Close(context.Background()) }
