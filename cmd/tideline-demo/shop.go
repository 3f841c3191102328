package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// schema is the shop: customers and their orders, with seed rows. The seed rows reach Kafka
// through the initial snapshot (op "r"), the workload's changes through the WAL (c, u, d).
const schema = `
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
`

// createSchema creates the shop tables and their seed rows in the database at dsn.
func createSchema(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to the demo database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create the shop schema: %w", err)
	}
	return nil
}

var (
	firstNames = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "John"}
	lastNames  = []string{"Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen", "Backus"}
	countries  = []string{"DE", "FR", "GB", "NL", "US", "JP", "BR", "IN"}
	skus       = []string{"SKU-100", "SKU-101", "SKU-102", "SKU-103", "SKU-104", "SKU-105", "SKU-106"}
)

// workload is the shop's traffic: one connection, used by one goroutine.
type workload struct {
	conn *pgx.Conn
	rnd  *rand.Rand
	// maxCustomer and maxOrder are the highest ids inserted so far. Updates and deletes pick an
	// id below them at random; one that was deleted meanwhile matches no row, which is fine.
	maxCustomer, maxOrder int64
}

// runWorkload commits about rate transactions per second on the shop tables until ctx is done,
// then returns nil. Each transaction is one shop action: a sign-up with a first order, an order,
// an order moving on (paid, shipped, delivered), a customer's new address, a cancelled order, or
// a closed account (its orders and the customer deleted together).
func runWorkload(ctx context.Context, dsn string, rate int, log *zap.Logger) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("workload: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	w := &workload{conn: conn, rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM public.customers").Scan(&w.maxCustomer); err != nil {
		return quiet(ctx, fmt.Errorf("workload: read customers: %w", err))
	}
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM public.orders").Scan(&w.maxOrder); err != nil {
		return quiet(ctx, fmt.Errorf("workload: read orders: %w", err))
	}
	log.Info("workload started", zap.Int("tx_per_second", rate))

	// A ticker drops ticks when a transaction runs long, so the rate is a ceiling, never a
	// burst to catch up.
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	var txs, total int64
	for {
		select {
		case <-ctx.Done():
			log.Info("workload stopped", zap.Int64("transactions", total))
			return nil
		case <-progress.C:
			log.Info("workload", zap.Int64("transactions_last_10s", txs), zap.Int64("transactions", total))
			txs = 0
		case <-tick.C:
			act := w.action()
			if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return act(ctx, tx) }); err != nil {
				return quiet(ctx, fmt.Errorf("workload: %w", err))
			}
			txs++
			total++
		}
	}
}

// quiet turns an error caused by cancellation into nil: stopping is not a failure.
func quiet(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// action picks the next transaction's work.
func (w *workload) action() func(context.Context, pgx.Tx) error {
	if w.maxCustomer == 0 || w.maxOrder == 0 {
		return w.signUp
	}
	switch n := w.rnd.IntN(100); {
	case n < 20:
		return w.signUp
	case n < 50:
		return w.placeOrder
	case n < 80:
		return w.advanceOrder
	case n < 92:
		return w.updateCustomer
	case n < 98:
		return w.cancelOrder
	default:
		return w.closeAccount
	}
}

func (w *workload) signUp(ctx context.Context, tx pgx.Tx) error {
	first, last := firstNames[w.rnd.IntN(len(firstNames))], lastNames[w.rnd.IntN(len(lastNames))]
	var id int64
	err := tx.QueryRow(ctx, `INSERT INTO public.customers (email, name, country) VALUES ($1, $2, $3) RETURNING id`,
		fmt.Sprintf("%s.%s.%d@example.com", first, last, w.rnd.IntN(100000)), first+" "+last,
		countries[w.rnd.IntN(len(countries))]).Scan(&id)
	if err != nil {
		return fmt.Errorf("sign up: %w", err)
	}
	w.maxCustomer = max(w.maxCustomer, id)
	return w.insertOrder(ctx, tx, id)
}

func (w *workload) placeOrder(ctx context.Context, tx pgx.Tx) error {
	// A customer picked at random may have closed the account: then the order goes to the
	// newest one, which the workload never deletes before it places an order for it.
	id := 1 + w.rnd.Int64N(w.maxCustomer)
	var ok bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM public.customers WHERE id = $1)`, id).Scan(&ok); err != nil {
		return fmt.Errorf("place order: %w", err)
	}
	if !ok {
		if err := tx.QueryRow(ctx, `SELECT max(id) FROM public.customers`).Scan(&id); err != nil {
			return fmt.Errorf("place order: %w", err)
		}
	}
	return w.insertOrder(ctx, tx, id)
}

func (w *workload) insertOrder(ctx context.Context, tx pgx.Tx, customer int64) error {
	items := make([]map[string]any, 1+w.rnd.IntN(3))
	total := 0.0
	for i := range items {
		qty, price := 1+w.rnd.IntN(4), 5+w.rnd.Float64()*60
		items[i] = map[string]any{"sku": skus[w.rnd.IntN(len(skus))], "qty": qty, "price": fmt.Sprintf("%.2f", price)}
		total += float64(qty) * price
	}
	var id int64
	err := tx.QueryRow(ctx,
		`INSERT INTO public.orders (customer_id, status, total, items) VALUES ($1, 'pending', round($2::numeric, 2), $3) RETURNING id`,
		customer, total, items).Scan(&id)
	if err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	w.maxOrder = max(w.maxOrder, id)
	return nil
}

func (w *workload) advanceOrder(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `UPDATE public.orders SET status = CASE status
		WHEN 'pending' THEN 'paid' WHEN 'paid' THEN 'shipped' ELSE 'delivered' END
		WHERE id = $1 AND status <> 'delivered'`, 1+w.rnd.Int64N(w.maxOrder))
	if err != nil {
		return fmt.Errorf("advance order: %w", err)
	}
	return nil
}

func (w *workload) updateCustomer(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `UPDATE public.customers SET country = $2, updated_at = now() WHERE id = $1`,
		1+w.rnd.Int64N(w.maxCustomer), countries[w.rnd.IntN(len(countries))])
	if err != nil {
		return fmt.Errorf("update customer: %w", err)
	}
	return nil
}

func (w *workload) cancelOrder(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DELETE FROM public.orders WHERE id = $1 AND status IN ('pending', 'paid')`,
		1+w.rnd.Int64N(w.maxOrder))
	if err != nil {
		return fmt.Errorf("cancel order: %w", err)
	}
	return nil
}

func (w *workload) closeAccount(ctx context.Context, tx pgx.Tx) error {
	// Never the newest customer: placeOrder falls back to it.
	if w.maxCustomer < 2 {
		return nil
	}
	id := 1 + w.rnd.Int64N(w.maxCustomer-1)
	if _, err := tx.Exec(ctx, `DELETE FROM public.orders WHERE customer_id = $1`, id); err != nil {
		return fmt.Errorf("close account: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM public.customers WHERE id = $1`, id); err != nil {
		return fmt.Errorf("close account: %w", err)
	}
	return nil
}
