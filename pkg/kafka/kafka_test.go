package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/tideline-cdc/tideline/pkg/config"
)

func TestStoreSaveLoad(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := config.Kafka{ClientID: "t", Compression: "lz4", Linger: time.Millisecond, MaxMessageBytes: 1 << 20}
	cl, err := NewClient(cfg, c.ListenAddrs(), 1<<20, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	topics := NewTopics(cl, config.Topics{Partitions: 3, ReplicationFactor: -1}, nil)
	s := NewStore(cl, topics, "p.offsets")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if v, err := s.Load(ctx, "a"); err != nil || v != nil {
		t.Fatalf("empty store: %q, %v", v, err)
	}
	for _, kv := range [][2]string{{"a", "1"}, {"b", "x"}, {"a", "2"}} {
		if err := s.Save(ctx, kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.Load(ctx, "a"); err != nil || string(v) != "2" {
		t.Fatalf("Load(a) = %q, %v; want the last value 2", v, err)
	}
	if v, err := s.Load(ctx, "zz"); err != nil || v != nil {
		t.Fatalf("Load(zz) = %q, %v; want nil", v, err)
	}
	// Topics are created with the configured partitions, the store's with one.
	if err := topics.Ensure(ctx, "p.public.t"); err != nil {
		t.Fatal(err)
	}
	if err := topics.Ensure(ctx, "p.public.t"); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
}

func TestPartitionerNullKeyGoesToZero(t *testing.T) {
	tp := Partitioner().ForTopic("t")
	for i := 0; i < 20; i++ {
		if p := tp.Partition(&kgo.Record{}, 8); p != 0 {
			t.Fatalf("null key on partition %d", p)
		}
	}
	// Agreement with Java and librdkafka is checked end to end by
	// TestKcatReadsEmbeddedBroker; here: keyed records hash consistently.
	if !tp.RequiresConsistency(&kgo.Record{Key: []byte("k")}) {
		t.Fatal("keyed records must be partitioned consistently")
	}
	a := tp.Partition(&kgo.Record{Key: []byte(`{"id":1}`)}, 8)
	b := tp.Partition(&kgo.Record{Key: []byte(`{"id":1}`)}, 8)
	if a != b {
		t.Fatalf("same key, partitions %d and %d", a, b)
	}
}
