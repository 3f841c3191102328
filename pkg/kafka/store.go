package kafka

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/pkg/checkpoint"
)

// Store keeps source state in a compacted, single-partition topic, keyed
// by the state's name (Kafka Connect keeps its offsets the same way).
type Store struct {
	cl    *kgo.Client
	topic string
	cfg   *Topics
}

var _ checkpoint.Store = (*Store)(nil)

// NewStore returns a store on topic, created (compacted) by topics when
// missing.
func NewStore(cl *kgo.Client, topics *Topics, topic string) *Store {
	return &Store{cl: cl, topic: topic, cfg: topics}
}

func (s *Store) ensure(ctx context.Context) error {
	// Compacted and never expired: the latest value per key stays forever.
	return s.cfg.EnsureWith(ctx, s.topic, 1, map[string]string{
		"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1",
	})
}

// Save implements checkpoint.Store: it returns once Kafka acked the record.
func (s *Store) Save(ctx context.Context, key string, value []byte) error {
	if err := s.ensure(ctx); err != nil {
		return err
	}
	r := &kgo.Record{Topic: s.topic, Key: []byte(key), Value: value}
	if err := s.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("save %s to %s: %w", key, s.topic, err)
	}
	return nil
}

// Load implements checkpoint.Store: it reads the topic from its start to
// its end and returns the last value under key.
func (s *Store) Load(ctx context.Context, key string) ([]byte, error) {
	if err := s.ensure(ctx); err != nil {
		return nil, err
	}
	var val []byte
	err := readAll(ctx, s.cl, s.topic, func(r *kgo.Record) {
		if string(r.Key) == key {
			val = r.Value
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load %s from %s: %w", key, s.topic, err)
	}
	return val, nil
}

// readAll calls fn for every record of partition 0 of topic, from its
// start to the end it has when readAll is called.
func readAll(ctx context.Context, cl *kgo.Client, topic string, fn func(*kgo.Record)) error {
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	end, ok := ends.Lookup(topic, 0)
	if !ok || end.Err != nil {
		return fmt.Errorf("no end offset (%v)", end.Err)
	}
	if end.Offset == 0 {
		return nil
	}
	cons, err := kgo.NewClient(
		kgo.SeedBrokers(cl.OptValue(kgo.SeedBrokers).([]string)...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
	)
	if err != nil {
		return err
	}
	defer cons.Close()
	for {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, fe := range fs.Errors() {
			return fe.Err
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			fn(r)
			if r.Offset >= end.Offset-1 {
				done = true
			}
		})
		if done {
			return nil
		}
	}
}
