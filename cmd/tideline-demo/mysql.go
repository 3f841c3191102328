package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/internal/testenv"
)

// mariaDB is the demo on MariaDB: make demo SOURCE=mysql.
var mariaDB = database{
	title:      "MariaDB",
	sourceType: "mysql",
	tables:     []string{"shop.customers", "shop.orders"},
	stopping:   "saving the binlog position",
	packages:   "demo-mysql",
	makeCmd:    "make demo SOURCE=mysql",
	sql:        &mysqlSQL,
	start: func(ctx context.Context, log *zap.Logger) (server, error) {
		log.Info("starting a throwaway MariaDB server (mariadb-install-db in a temp dir, binlog_format=ROW)")
		m, err := testenv.StartMariaDB(ctx, testenv.MariaDBOptions{Logf: log.Sugar().Infof})
		if err != nil {
			return nil, err
		}
		return mariaServer{m}, nil
	},
}

var mysqlSQL = shopSQL{
	schema: append([]string{
		// The server's own default character set is latin1; the shop's names need not be.
		`CREATE DATABASE shop DEFAULT CHARACTER SET utf8mb4`,
		`CREATE TABLE shop.customers (
			id         BIGINT AUTO_INCREMENT PRIMARY KEY,
			email      VARCHAR(255) NOT NULL,
			name       VARCHAR(255) NOT NULL,
			country    CHAR(2) NOT NULL,
			created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
			updated_at TIMESTAMP(6) NULL DEFAULT NULL
		)`,
		`CREATE TABLE shop.orders (
			id          BIGINT AUTO_INCREMENT PRIMARY KEY,
			customer_id BIGINT NOT NULL,
			status      VARCHAR(16) NOT NULL,
			total       DECIMAL(12,2) NOT NULL,
			items       JSON NOT NULL,
			created_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
			FOREIGN KEY (customer_id) REFERENCES shop.customers (id)
		)`,
	}, mysqlSeed()...),
	maxCustomer:    `SELECT COALESCE(MAX(id), 0) FROM shop.customers`,
	maxOrder:       `SELECT COALESCE(MAX(id), 0) FROM shop.orders`,
	countCustomer:  `SELECT COUNT(*) FROM shop.customers WHERE id = ?`,
	insertCustomer: `INSERT INTO shop.customers (email, name, country) VALUES (?, ?, ?)`,
	insertOrder:    `INSERT INTO shop.orders (customer_id, status, total, items) VALUES (?, 'pending', ROUND(?, 2), ?)`,
	advanceOrder: `UPDATE shop.orders SET status = CASE status
		WHEN 'pending' THEN 'paid' WHEN 'paid' THEN 'shipped' ELSE 'delivered' END
		WHERE id = ? AND status <> 'delivered'`,
	updateCustomer: `UPDATE shop.customers SET country = ?, updated_at = CURRENT_TIMESTAMP(6) WHERE id = ?`,
	cancelOrder:    `DELETE FROM shop.orders WHERE id = ? AND status IN ('pending', 'paid')`,
	deleteOrders:   `DELETE FROM shop.orders WHERE customer_id = ?`,
	deleteCustomer: `DELETE FROM shop.customers WHERE id = ?`,
}

// mysqlSeed returns the INSERTs of the seed rows: the same 50 customers and 120 orders as the
// PostgreSQL schema's generate_series makes, written out here, as MySQL has no generate_series.
func mysqlSeed() []string {
	var c, o strings.Builder
	c.WriteString("INSERT INTO shop.customers (email, name, country) VALUES ")
	for i := 1; i <= 50; i++ {
		if i > 1 {
			c.WriteString(", ")
		}
		fmt.Fprintf(&c, "('customer%d@example.com', '%s %s', '%s')", i, firstNames[i%8], lastNames[(i/8)%8], countries[i%8])
	}
	statuses := []string{"pending", "paid", "shipped", "delivered"}
	o.WriteString("INSERT INTO shop.orders (customer_id, status, total, items) VALUES ")
	for i := 1; i <= 120; i++ {
		if i > 1 {
			o.WriteString(", ")
		}
		fmt.Fprintf(&o, `(%d, '%s', %.2f, '[{"sku": "SKU-%d", "qty": %d}]')`,
			1+i%50, statuses[i%4], 5+rand.Float64()*200, 100+i%17, 1+i%3)
	}
	return []string{c.String(), o.String()}
}

// mariaServer is a throwaway MariaDB server; the shop lives in database shop.
type mariaServer struct{ m *testenv.MariaDB }

var _ server = mariaServer{}

func (s mariaServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.m.Port()) }
func (s mariaServer) dsn() string  { return "mysql://root@" + s.addr() + "/shop" }
func (s mariaServer) shell() string {
	return fmt.Sprintf("mariadb -h 127.0.0.1 -P %d -u root shop", s.m.Port())
}
func (s mariaServer) dir() string { return s.m.Dir() }
func (s mariaServer) stop() error { return s.m.Stop() }

func (s mariaServer) connect(ctx context.Context) (shopConn, error) {
	conn, err := client.ConnectWithContext(ctx, s.addr(), "root", "", "", 10*time.Second)
	if err != nil {
		return nil, err
	}
	return mysqlConn{conn}, nil
}

// mysqlConn is a shopConn on go-mysql's client. That client takes no context: a statement runs
// to its end after a cancellation, which on a local server is a few milliseconds.
type mysqlConn struct{ conn *client.Conn }

var _ shopConn = mysqlConn{}

func (c mysqlConn) tx(_ context.Context, fn func() error) error {
	if err := c.conn.Begin(); err != nil {
		return err
	}
	if err := fn(); err != nil {
		// The session is still usable after a failed statement, and the rollback's own
		// failure would only hide the first one.
		_ = c.conn.Rollback()
		return err
	}
	return c.conn.Commit()
}

func (c mysqlConn) exec(_ context.Context, q string, args ...any) error {
	r, err := c.conn.Execute(q, args...)
	if err != nil {
		return err
	}
	r.Close()
	return nil
}

func (c mysqlConn) queryInt(_ context.Context, q string, args ...any) (int64, error) {
	r, err := c.conn.Execute(q, args...)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return r.GetInt(0, 0)
}

func (c mysqlConn) insert(_ context.Context, q string, args ...any) (int64, error) {
	r, err := c.conn.Execute(q, args...)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return int64(r.InsertId), nil
}

// close says goodbye (COM_QUIT), so the server ends the session at once, and closes; Quit only
// closes once the goodbye is sent.
func (c mysqlConn) close() {
	if c.conn.Quit() != nil {
		_ = c.conn.Close()
	}
}
