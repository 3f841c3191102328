// Package kafka connects Tideline to Kafka: the franz-go client built from
// config, the publisher, topic administration and the embedded broker.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/change"
	"github.com/tideline-cdc/tideline/pkg/codec"
	"github.com/tideline-cdc/tideline/pkg/config"
)

// NewClient returns a producing client for brokers: idempotent, acks=all,
// records retried without limit (an outage pauses delivery, it never drops
// a record), keys partitioned with murmur2 exactly as Kafka's Java client.
// bufferBytes should exceed the pipeline's in-flight budget so that Produce
// never blocks (the tracker does the waiting).
func NewClient(cfg config.Kafka, brokers []string, bufferBytes int64, log *zap.Logger) (*kgo.Client, error) {
	codec, err := compression(cfg.Compression)
	if err != nil {
		return nil, err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(cfg.Linger),
		kgo.RecordPartitioner(Partitioner()),
		kgo.MaxBufferedBytes(int(bufferBytes)),
		kgo.MaxBufferedRecords(1 << 30),
		kgo.UnknownTopicRetries(-1),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxMessageBytes)),
		kgo.WithLogger(zapLogger{log.Named("kafka")}),
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", brokers, err)
	}
	return cl, nil
}

func compression(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "none":
		return kgo.NoCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("kafka.compression %q is not known", name)
}

// Partitioner hashes keys with murmur2 like Kafka's default partitioner, so
// clients in any language agree on a key's partition. Records without a key
// (tables with no key columns, truncates) go to partition 0, which keeps
// them in order.
func Partitioner() kgo.Partitioner { return keyOrZero{kgo.StickyKeyPartitioner(nil)} }

type keyOrZero struct{ keyed kgo.Partitioner }

func (p keyOrZero) ForTopic(t string) kgo.TopicPartitioner {
	return keyOrZeroTopic{p.keyed.ForTopic(t)}
}

type keyOrZeroTopic struct{ keyed kgo.TopicPartitioner }

func (keyOrZeroTopic) RequiresConsistency(*kgo.Record) bool { return true }

func (p keyOrZeroTopic) Partition(r *kgo.Record, n int) int {
	if r.Key == nil {
		return 0
	}
	return p.keyed.Partition(r, n)
}

// Topics creates the topics Tideline writes, once each.
type Topics struct {
	adm     *kadm.Client
	cfg     config.Topics
	configs map[string]*string

	mu    sync.Mutex
	known map[string]bool
}

// NewTopics returns a topic creator over cl; extra configs (e.g. the
// embedded broker's retention) are added to every topic it creates.
func NewTopics(cl *kgo.Client, cfg config.Topics, extra map[string]string) *Topics {
	configs := map[string]*string{}
	for k, v := range extra {
		configs[k] = kadm.StringPtr(v)
	}
	for k, v := range cfg.Config {
		configs[k] = kadm.StringPtr(v)
	}
	return &Topics{adm: kadm.NewClient(cl), cfg: cfg, configs: configs, known: map[string]bool{}}
}

// Ensure creates topic if it does not exist yet. An existing topic is left as
// it is. It retries while the brokers are unreachable, until ctx is done.
func (t *Topics) Ensure(ctx context.Context, topic string) error {
	return t.EnsureWith(ctx, topic, t.cfg.Partitions, nil)
}

// EnsureWith is Ensure with a partition count and configs added to (or
// overriding) the usual ones.
func (t *Topics) EnsureWith(ctx context.Context, topic string, partitions int32, extra map[string]string) error {
	t.mu.Lock()
	ok := t.known[topic]
	t.mu.Unlock()
	if ok {
		return nil
	}
	for attempt := 0; ; attempt++ {
		configs := t.configs
		if len(extra) > 0 {
			configs = make(map[string]*string, len(t.configs)+len(extra))
			for k, v := range t.configs {
				configs[k] = v
			}
			for k, v := range extra {
				configs[k] = kadm.StringPtr(v)
			}
		}
		resp, err := t.adm.CreateTopic(ctx, partitions, t.cfg.ReplicationFactor, configs, topic)
		if err == nil {
			err = resp.Err
		}
		if err == nil || errors.Is(err, kerr.TopicAlreadyExists) {
			t.mu.Lock()
			t.known[topic] = true
			t.mu.Unlock()
			return nil
		}
		var ke *kerr.Error
		if errors.As(err, &ke) && !ke.Retriable {
			return fmt.Errorf("create topic %s: %w", topic, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create topic %s: %w (last error: %v)", topic, ctx.Err(), err)
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second)):
		}
	}
}

// Produce hands every record of b to the client. ack is called once per
// record, from the client's goroutines, when Kafka acknowledged it (nil) or
// the client gave up on it.
func Produce(ctx context.Context, cl *kgo.Client, b *change.Batch, ack func(error)) {
	if len(b.Records) == 0 {
		return
	}
	recs := make([]kgo.Record, len(b.Records))
	// One header slice for the batch: each record gets its own window.
	hdrs := make([]kgo.RecordHeader, 0, 2*len(b.Records))
	promise := func(r *kgo.Record, err error) {
		if err != nil {
			hint := ""
			if errors.Is(err, kerr.MessageTooLarge) {
				hint = " (a row larger than kafka.max_message_bytes or the topic's max.message.bytes: raise both)"
			}
			err = fmt.Errorf("produce to %s partition %d: %w%s", r.Topic, r.Partition, err, hint)
		}
		ack(err)
	}
	for i := range b.Records {
		r := &b.Records[i]
		recs[i] = kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
		if r.Value != nil {
			n := len(hdrs)
			hdrs = append(hdrs, kgo.RecordHeader{Key: codec.OrderHeader, Value: r.Order}, kgo.RecordHeader{Key: codec.SchemaHeader, Value: r.Schema})
			recs[i].Headers = hdrs[n : n+2 : n+2]
		}
		cl.Produce(ctx, &recs[i], promise)
	}
}

// zapLogger adapts zap to kgo.Logger; kgo's own debug chatter is dropped.
type zapLogger struct{ l *zap.Logger }

func (z zapLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (z zapLogger) Log(level kgo.LogLevel, msg string, kv ...any) {
	fields := make([]zap.Field, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		fields = append(fields, zap.Any(fmt.Sprint(kv[i]), kv[i+1]))
	}
	switch level {
	case kgo.LogLevelError:
		z.l.Error(msg, fields...)
	case kgo.LogLevelWarn:
		z.l.Warn(msg, fields...)
	default:
		z.l.Info(msg, fields...)
	}
}
