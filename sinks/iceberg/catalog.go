package icebergsink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	iceio "github.com/apache/iceberg-go/io"
	_ "github.com/apache/iceberg-go/io/gocloud/s3" // registers the s3:// warehouse scheme
	"github.com/apache/iceberg-go/table"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, for PostgreSQL catalogs
	_ "modernc.org/sqlite"             // the "sqlite" database/sql driver (pure Go)

	"github.com/tideline-cdc/tideline/pkg/change"
)

// Config is the Iceberg sink's configuration.
type Config struct {
	// Name is the sink's name (logs).
	Name string
	// Catalog is the SQL catalog's database: a PostgreSQL URL or DSN
	// (postgres://…, postgresql://…, or "host=… dbname=…"), or else the
	// path of a SQLite file, created if missing. Default, for a local
	// warehouse: catalog.db in the warehouse directory.
	Catalog string
	// CatalogName is the catalog's name in that database (its
	// catalog_name column): other engines open the catalog under this
	// name. Default "tideline".
	CatalogName string
	// Warehouse is where tables' data and metadata files go: a local
	// directory (a path or file:// URL) or s3://bucket/prefix.
	Warehouse string
	// S3 configures an s3:// warehouse.
	S3 S3Config
	// SoftDelete keeps deleted rows, with _tideline_deleted = true.
	SoftDelete bool
	// CompactEvery, when positive, makes the sink compact a table itself
	// (Compact with default options) after every CompactEvery commits to
	// it. Each batch reads its keys' current rows, and that read costs
	// one file open per data and delete file: compaction keeps it
	// bounded. Zero leaves compaction to `tideline iceberg compact`.
	CompactEvery int
}

// S3Config is how an s3:// warehouse is reached. Empty fields fall back to
// the AWS SDK's defaults: AWS_REGION, AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (or a profile, or an instance role), and
// AWS_S3_ENDPOINT for the endpoint.
type S3Config struct {
	// Endpoint is an S3-compatible service's URL (MinIO, R2, …); empty
	// for AWS.
	Endpoint string
	Region   string
	// AccessKeyID and SecretAccessKey are static credentials; set both or
	// neither. SessionToken goes with temporary ones.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// PathStyle addresses buckets as endpoint/bucket rather than
	// bucket.endpoint. Nil: path style with a custom Endpoint, virtual
	// hosts without one (what MinIO and AWS each want).
	PathStyle *bool
}

// DefaultCatalogName is the catalog name used when Config.CatalogName is
// empty.
const DefaultCatalogName = "tideline"

// Validate reports every problem of cfg, each with its key.
func (cfg Config) Validate() error {
	var errs []error
	u, err := url.Parse(cfg.Warehouse)
	switch {
	case cfg.Warehouse == "":
		errs = append(errs, errors.New("warehouse: a directory or s3://bucket/prefix is required"))
	case err != nil:
		errs = append(errs, fmt.Errorf("warehouse: %w", err))
	case u.Scheme == "s3" || u.Scheme == "s3a":
		if u.Host == "" {
			errs = append(errs, fmt.Errorf("warehouse: %q has no bucket", cfg.Warehouse))
		}
		if cfg.Catalog == "" {
			errs = append(errs, errors.New("catalog: required with an s3 warehouse (a SQLite file path or a PostgreSQL DSN)"))
		}
	case u.Scheme != "" && u.Scheme != "file" && !filepath.IsAbs(cfg.Warehouse):
		errs = append(errs, fmt.Errorf("warehouse: scheme %q: want a directory, file:// or s3://", u.Scheme))
	}
	if (cfg.S3.AccessKeyID == "") != (cfg.S3.SecretAccessKey == "") {
		errs = append(errs, errors.New("s3.access_key_id, s3.secret_access_key: set both or neither"))
	}
	if cfg.CompactEvery < 0 {
		errs = append(errs, fmt.Errorf("compact_every: %d: want 0 (off) or more", cfg.CompactEvery))
	}
	if cfg.S3.Endpoint != "" {
		if e, err := url.Parse(cfg.S3.Endpoint); err != nil || e.Scheme == "" || e.Host == "" {
			errs = append(errs, fmt.Errorf("s3.endpoint: %q is not an http(s) URL", cfg.S3.Endpoint))
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills in the defaults and makes a local warehouse an
// absolute path.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.CatalogName == "" {
		cfg.CatalogName = DefaultCatalogName
	}
	if !isS3(cfg.Warehouse) {
		dir := strings.TrimPrefix(cfg.Warehouse, "file://")
		abs, err := filepath.Abs(dir)
		if err != nil {
			return cfg, fmt.Errorf("warehouse %s: %w", cfg.Warehouse, err)
		}
		cfg.Warehouse = abs
		if cfg.Catalog == "" {
			cfg.Catalog = filepath.Join(abs, "catalog.db")
		}
	}
	return cfg, nil
}

func isS3(warehouse string) bool {
	return strings.HasPrefix(warehouse, "s3://") || strings.HasPrefix(warehouse, "s3a://")
}

// isPostgres reports whether a catalog setting names a PostgreSQL database.
func isPostgres(c string) bool {
	return strings.HasPrefix(c, "postgres://") || strings.HasPrefix(c, "postgresql://") ||
		strings.Contains(c, "host=") || strings.Contains(c, "dbname=")
}

// properties are the catalog's properties: the warehouse, and the S3
// settings iceberg-go's file IO reads.
func (cfg Config) properties() iceberg.Properties {
	p := iceberg.Properties{"warehouse": cfg.Warehouse}
	set := func(k, v string) {
		if v != "" {
			p[k] = v
		}
	}
	set(iceio.S3EndpointURL, cfg.S3.Endpoint)
	set(iceio.S3Region, cfg.S3.Region)
	set(iceio.S3AccessKeyID, cfg.S3.AccessKeyID)
	set(iceio.S3SecretAccessKey, cfg.S3.SecretAccessKey)
	set(iceio.S3SessionToken, cfg.S3.SessionToken)
	if cfg.S3.PathStyle != nil {
		p[iceio.S3ForceVirtualAddressing] = strconv.FormatBool(!*cfg.S3.PathStyle)
	}
	return p
}

// openCatalog opens the SQL catalog (creating its tables if missing) and
// returns it with its database handle, which the caller closes.
func openCatalog(ctx context.Context, cfg Config) (*sqlcat.Catalog, *sql.DB, error) {
	var db *sql.DB
	var dialect sqlcat.SupportedDialect
	var err error
	if isPostgres(cfg.Catalog) {
		dialect = sqlcat.Postgres
		db, err = sql.Open("pgx", cfg.Catalog)
	} else {
		dialect = sqlcat.SQLite
		path := strings.TrimPrefix(cfg.Catalog, "sqlite://")
		if dir := filepath.Dir(path); dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, nil, fmt.Errorf("catalog %s: %w", path, err)
			}
		}
		// Another process (the compaction command, a reader) may hold
		// the file's lock for a moment: wait for it rather than fail.
		// WAL lets readers in while the sink writes.
		db, err = sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: %w", err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close() //nolint:errcheck // the ping error is the one to report
		return nil, nil, fmt.Errorf("catalog: %w", err)
	}
	// NewCatalog creates the catalog tables with a background context.
	cat, err := sqlcat.NewCatalog(cfg.CatalogName, db, dialect, cfg.properties())
	if err != nil {
		db.Close() //nolint:errcheck
		return nil, nil, fmt.Errorf("catalog: %w", err)
	}
	return cat, db, nil
}

// identifier is the Iceberg table of a source table: namespace = the
// source schema (the database for MySQL), table = its name.
func identifier(t *change.Table) table.Identifier {
	ns := t.Schema
	if ns == "" {
		ns = t.Database
	}
	return table.Identifier{ns, t.Name}
}

// createNamespace creates ns unless it exists.
func createNamespace(ctx context.Context, cat catalog.Catalog, ns table.Identifier) error {
	ok, err := cat.CheckNamespaceExists(ctx, ns)
	if err != nil || ok {
		return err
	}
	err = cat.CreateNamespace(ctx, ns, nil)
	if errors.Is(err, catalog.ErrNamespaceAlreadyExists) {
		return nil
	}
	return err
}
