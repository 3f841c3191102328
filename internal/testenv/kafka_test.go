package testenv

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestKafka(t *testing.T) {
	t.Parallel()
	c := NewKafka(t, kfake.SeedTopics(1, "events"))
	if n := len(c.ListenAddrs()); n != 1 {
		t.Fatalf("%d brokers, want 1", n)
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumeTopics("events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	ctx := t.Context()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "events", Key: []byte("k"), Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	fetches := cl.PollFetches(ctx)
	if err := fetches.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fetches.Records()
	if len(recs) != 1 || string(recs[0].Key) != "k" || string(recs[0].Value) != "v" {
		t.Fatalf("consumed %v, want one record k=v", recs)
	}
}
