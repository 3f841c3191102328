package kafka

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tideline-cdc/tideline/pkg/change"
)

// Schemas keeps the shapes of the captured tables in a compacted,
// single-partition topic (<topic_prefix>.schemas), keyed by a fingerprint
// of the shape. Every change record carries its shape's fingerprint in the
// tideline.schema header, so sinks know each column's type without a
// schema in every record (a schema registry in miniature).
//
// The capture pipeline publishes a shape, and waits for Kafka's ack, before
// it produces the first record that names it; a sink that meets an unknown
// fingerprint reads the topic again. Methods are safe for concurrent use.
type Schemas struct {
	cl     *kgo.Client
	topics *Topics
	topic  string

	mu   sync.Mutex
	byID map[string]*change.Table // shapes read, for sinks
	sent map[string]bool          // fingerprints published by this process
}

// NewSchemas returns the registry on topic.
func NewSchemas(cl *kgo.Client, topics *Topics, topic string) *Schemas {
	return &Schemas{cl: cl, topics: topics, topic: topic, byID: map[string]*change.Table{}, sent: map[string]bool{}}
}

// schemaDoc is a shape as stored in the topic (docs/envelope.md).
type schemaDoc struct {
	Database string         `json:"database"`
	Schema   string         `json:"schema,omitempty"`
	Table    string         `json:"table"`
	Topic    string         `json:"topic"`
	Columns  []schemaColumn `json:"columns"`
}

type schemaColumn struct {
	Name    string         `json:"name"`
	Type    string         `json:"type"`
	Logical change.Logical `json:"logical"`
	Key     bool           `json:"key,omitempty"`
}

func encodeSchema(t *change.Table) (id []byte, doc []byte) {
	d := schemaDoc{Database: t.Database, Schema: t.Schema, Table: t.Name, Topic: t.Topic}
	for _, c := range t.Columns {
		d.Columns = append(d.Columns, schemaColumn{Name: c.Name, Type: c.Type, Logical: c.Logical, Key: c.Key})
	}
	doc, _ = json.Marshal(d)
	sum := sha256.Sum256(doc)
	return []byte(hex.EncodeToString(sum[:8])), doc
}

func decodeSchema(doc []byte) (*change.Table, error) {
	var d schemaDoc
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, err
	}
	t := &change.Table{Database: d.Database, Schema: d.Schema, Name: d.Table, Topic: d.Topic}
	for _, c := range d.Columns {
		t.Columns = append(t.Columns, change.Column{Name: c.Name, Type: c.Type, Logical: c.Logical, Key: c.Key})
		t.HasKey = t.HasKey || c.Key
	}
	return t, nil
}

// ID returns the fingerprint of t's shape, publishing the shape first if
// this process has not yet (and waiting for Kafka's ack). The publisher
// caches fingerprints per *change.Table, so ID runs once per new shape.
func (s *Schemas) ID(ctx context.Context, t *change.Table) ([]byte, error) {
	id, doc := encodeSchema(t)
	s.mu.Lock()
	sent := s.sent[string(id)]
	s.mu.Unlock()
	if sent {
		return id, nil
	}
	if err := s.ensure(ctx); err != nil {
		return nil, err
	}
	if err := s.cl.ProduceSync(ctx, &kgo.Record{Topic: s.topic, Key: id, Value: doc}).FirstErr(); err != nil {
		return nil, fmt.Errorf("publish the shape of %s to %s: %w", t.Topic, s.topic, err)
	}
	s.mu.Lock()
	s.sent[string(id)] = true
	s.mu.Unlock()
	return id, nil
}

func (s *Schemas) ensure(ctx context.Context) error {
	// Compacted and never expired, like the offsets topic: a shape is
	// needed as long as a record names it.
	return s.topics.EnsureWith(ctx, s.topic, 1, map[string]string{
		"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1",
	})
}

// Table returns the shape with fingerprint id, reading the topic again
// when it is not known yet.
func (s *Schemas) Table(ctx context.Context, id []byte) (*change.Table, error) {
	s.mu.Lock()
	t, ok := s.byID[string(id)]
	s.mu.Unlock()
	if ok {
		return t, nil
	}
	if err := s.ensure(ctx); err != nil {
		return nil, err
	}
	found := map[string]*change.Table{}
	var bad error
	err := readAll(ctx, s.cl, s.topic, func(r *kgo.Record) {
		t, err := decodeSchema(r.Value)
		if err != nil {
			bad = fmt.Errorf("shape %s in %s: %w", r.Key, s.topic, err)
			return
		}
		found[string(r.Key)] = t
	})
	if err != nil {
		return nil, fmt.Errorf("read shapes from %s: %w", s.topic, err)
	}
	s.mu.Lock()
	for k, v := range found {
		if _, ok := s.byID[k]; !ok {
			s.byID[k] = v
		}
	}
	t, ok = s.byID[string(id)]
	s.mu.Unlock()
	if !ok {
		if bad != nil {
			return nil, bad
		}
		return nil, fmt.Errorf("%w: %s is not in %s", change.ErrUnknownShape, id, s.topic)
	}
	return t, nil
}
