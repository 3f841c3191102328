package kafka

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/config"
)

// Embedded is the in-process single-node broker (franz-go's kfake) used by
// `brokers: [embedded]`: for demos and small installs, not a Kafka cluster.
type Embedded struct {
	c *kfake.Cluster
}

// StartEmbedded starts the broker on cfg.Listen, persisting to cfg.DataDir.
// Topics Tideline creates carry retention settings (see TopicConfigs), and
// the broker enforces them every minute, so memory and disk stay bounded.
func StartEmbedded(cfg config.EmbeddedBroker, log *zap.Logger) (*Embedded, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: listen %q: bad port", cfg.Listen)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded broker: data dir: %w", err)
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		// kfake binds 127.0.0.1; bind the configured host instead.
		kfake.ListenFn(func(network, addr string) (net.Listener, error) {
			_, p, _ := net.SplitHostPort(addr)
			return net.Listen(network, net.JoinHostPort(host, p))
		}),
		kfake.DataDir(cfg.DataDir),
		kfake.AllowAutoTopicCreation(),
		kfake.BrokerConfigs(map[string]string{
			"log.retention.ms":           strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
			"log.retention.bytes":        strconv.FormatInt(int64(cfg.RetentionBytes), 10),
			"log.cleaner.backoff.ms":     "60000",
			"message.max.bytes":          strconv.Itoa(16 << 20),
			"default.replication.factor": "1",
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded broker on %s (data dir %s): %w", cfg.Listen, cfg.DataDir, err)
	}
	log.Info("embedded Kafka broker started: a single-node broker for demos and small installs, not a Kafka cluster",
		zap.Strings("listen", c.ListenAddrs()), zap.String("data_dir", cfg.DataDir),
		zap.Duration("retention", cfg.Retention), zap.Int64("retention_bytes", int64(cfg.RetentionBytes)))
	return &Embedded{c: c}, nil
}

// Addrs returns the host:port the broker listens on.
func (e *Embedded) Addrs() []string { return e.c.ListenAddrs() }

// TopicConfigs returns the per-topic settings that make the broker's
// retention apply to a topic.
func TopicConfigs(cfg config.EmbeddedBroker) map[string]string {
	return map[string]string{
		"retention.ms":    strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
		"retention.bytes": strconv.FormatInt(int64(cfg.RetentionBytes), 10),
	}
}

// Close stops the broker, flushing its data dir. It is idempotent.
func (e *Embedded) Close() {
	if e.c != nil {
		e.c.Close()
		e.c = nil
	}
}
