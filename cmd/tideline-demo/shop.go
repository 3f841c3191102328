package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// shopSQL is the shop in one server's SQL: the schema and the workload's statements. Each
// statement's placeholders take the arguments in the order its comment lists.
type shopSQL struct {
	// schema creates the shop tables and their seed rows. The seed rows reach Kafka through the
	// initial snapshot (op "r"), the workload's changes through the log (c, u, d).
	schema []string

	maxCustomer    string // the highest customer id, 0 when there are none
	maxOrder       string // the highest order id, 0 when there are none
	countCustomer  string // id: 1 when that customer exists, else 0
	insertCustomer string // email, name, country: inserts a customer
	insertOrder    string // customer id, total (a float64), items (JSON text): inserts a pending order
	advanceOrder   string // id: pending -> paid -> shipped -> delivered
	updateCustomer string // country, id: a customer moved
	cancelOrder    string // id: deletes the order unless it is shipped or delivered
	deleteOrders   string // customer id: deletes the customer's orders
	deleteCustomer string // id: deletes the customer
}

// shopConn is one connection to a shop database. One goroutine uses it; a cancelled context
// makes a statement in progress fail or, on servers whose client has no cancellation, is only
// noticed after it.
type shopConn interface {
	// tx runs fn in one transaction: its statements, run through this connection, commit
	// together when fn returns nil and roll back when it fails.
	tx(ctx context.Context, fn func() error) error
	// exec runs a statement that returns no rows.
	exec(ctx context.Context, q string, args ...any) error
	// queryInt runs a query and returns the first column of its one row.
	queryInt(ctx context.Context, q string, args ...any) (int64, error)
	// insert runs an INSERT of one row and returns the new row's id.
	insert(ctx context.Context, q string, args ...any) (int64, error)
	// close closes the connection.
	close()
}

// createSchema creates the shop tables and their seed rows on srv.
func createSchema(ctx context.Context, srv server, sql *shopSQL) error {
	conn, err := srv.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to the demo database: %w", err)
	}
	defer conn.close()
	for _, q := range sql.schema {
		if err := conn.exec(ctx, q); err != nil {
			return fmt.Errorf("create the shop schema: %w", err)
		}
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
	conn shopConn
	sql  *shopSQL
	rnd  *rand.Rand
	// maxCustomer and maxOrder are the highest ids inserted so far. Updates and deletes pick an
	// id below them at random; one that was deleted meanwhile matches no row, which is fine.
	maxCustomer, maxOrder int64
}

// runWorkload commits about rate transactions per second on the shop tables until ctx is done,
// then returns nil. Each transaction is one shop action: a sign-up with a first order, an order,
// an order moving on (paid, shipped, delivered), a customer's new address, a cancelled order, or
// a closed account (its orders and the customer deleted together).
func runWorkload(ctx context.Context, srv server, sql *shopSQL, rate int, log *zap.Logger) error {
	conn, err := srv.connect(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("workload: connect: %w", err)
	}
	defer conn.close()
	w := &workload{conn: conn, sql: sql, rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	if w.maxCustomer, err = conn.queryInt(ctx, sql.maxCustomer); err != nil {
		return quiet(ctx, fmt.Errorf("workload: read customers: %w", err))
	}
	if w.maxOrder, err = conn.queryInt(ctx, sql.maxOrder); err != nil {
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
			if err := conn.tx(ctx, func() error { return act(ctx) }); err != nil {
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
func (w *workload) action() func(context.Context) error {
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

func (w *workload) signUp(ctx context.Context) error {
	first, last := firstNames[w.rnd.IntN(len(firstNames))], lastNames[w.rnd.IntN(len(lastNames))]
	id, err := w.conn.insert(ctx, w.sql.insertCustomer,
		fmt.Sprintf("%s.%s.%d@example.com", first, last, w.rnd.IntN(100000)), first+" "+last,
		countries[w.rnd.IntN(len(countries))])
	if err != nil {
		return fmt.Errorf("sign up: %w", err)
	}
	w.maxCustomer = max(w.maxCustomer, id)
	return w.insertOrder(ctx, id)
}

func (w *workload) placeOrder(ctx context.Context) error {
	// A customer picked at random may have closed the account: then the order goes to the
	// newest one, which the workload never deletes before it places an order for it.
	id := 1 + w.rnd.Int64N(w.maxCustomer)
	n, err := w.conn.queryInt(ctx, w.sql.countCustomer, id)
	if err != nil {
		return fmt.Errorf("place order: %w", err)
	}
	if n == 0 {
		if id, err = w.conn.queryInt(ctx, w.sql.maxCustomer); err != nil {
			return fmt.Errorf("place order: %w", err)
		}
	}
	return w.insertOrder(ctx, id)
}

func (w *workload) insertOrder(ctx context.Context, customer int64) error {
	items := make([]map[string]any, 1+w.rnd.IntN(3))
	total := 0.0
	for i := range items {
		qty, price := 1+w.rnd.IntN(4), 5+w.rnd.Float64()*60
		items[i] = map[string]any{"sku": skus[w.rnd.IntN(len(skus))], "qty": qty, "price": fmt.Sprintf("%.2f", price)}
		total += float64(qty) * price
	}
	js, err := json.Marshal(items)
	if err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	id, err := w.conn.insert(ctx, w.sql.insertOrder, customer, total, string(js))
	if err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	w.maxOrder = max(w.maxOrder, id)
	return nil
}

func (w *workload) advanceOrder(ctx context.Context) error {
	if err := w.conn.exec(ctx, w.sql.advanceOrder, 1+w.rnd.Int64N(w.maxOrder)); err != nil {
		return fmt.Errorf("advance order: %w", err)
	}
	return nil
}

func (w *workload) updateCustomer(ctx context.Context) error {
	err := w.conn.exec(ctx, w.sql.updateCustomer, countries[w.rnd.IntN(len(countries))], 1+w.rnd.Int64N(w.maxCustomer))
	if err != nil {
		return fmt.Errorf("update customer: %w", err)
	}
	return nil
}

func (w *workload) cancelOrder(ctx context.Context) error {
	if err := w.conn.exec(ctx, w.sql.cancelOrder, 1+w.rnd.Int64N(w.maxOrder)); err != nil {
		return fmt.Errorf("cancel order: %w", err)
	}
	return nil
}

func (w *workload) closeAccount(ctx context.Context) error {
	// Never the newest customer: placeOrder falls back to it.
	if w.maxCustomer < 2 {
		return nil
	}
	id := 1 + w.rnd.Int64N(w.maxCustomer-1)
	if err := w.conn.exec(ctx, w.sql.deleteOrders, id); err != nil {
		return fmt.Errorf("close account: %w", err)
	}
	if err := w.conn.exec(ctx, w.sql.deleteCustomer, id); err != nil {
		return fmt.Errorf("close account: %w", err)
	}
	return nil
}
