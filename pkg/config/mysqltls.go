package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
)

// MySQLParams are the query parameters a mysql:// DSN takes.
var MySQLParams = []string{"tls", "tls_ca", "tls_cert", "tls_key"}

// MySQLTLS reads the TLS parameters of a mysql:// DSN (the source's and
// the sink's alike): tls=true verifies the server's certificate against the
// system roots or tls_ca, tls=skip-verify encrypts without verifying,
// tls=false (the default) is plain TCP; tls_cert and tls_key add a client
// certificate. It returns nil for plain TCP, and an error naming the
// parameter for an unknown one or a file it cannot use.
func MySQLTLS(q url.Values, host string) (*tls.Config, error) {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !slices.Contains(MySQLParams, k) {
			return nil, fmt.Errorf("unknown parameter %q (known: %s)", k, strings.Join(MySQLParams, ", "))
		}
	}
	var cfg *tls.Config
	switch mode := q.Get("tls"); mode {
	case "", "false":
		for _, k := range []string{"tls_ca", "tls_cert", "tls_key"} {
			if q.Get(k) != "" {
				return nil, fmt.Errorf("%s needs tls=true (or skip-verify)", k)
			}
		}
		return nil, nil
	case "true":
		cfg = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	case "skip-verify":
		cfg = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // asked for by the user
	default:
		return nil, fmt.Errorf("tls=%q: use true, skip-verify or false", mode)
	}
	if ca := q.Get("tls_ca"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("tls_ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_ca %s: no PEM certificate in it", ca)
		}
	}
	if cert, key := q.Get("tls_cert"), q.Get("tls_key"); cert != "" || key != "" {
		if cert == "" || key == "" {
			return nil, errors.New("tls_cert and tls_key go together (a client certificate and its key)")
		}
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("tls_cert/tls_key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}
