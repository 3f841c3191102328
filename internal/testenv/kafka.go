package testenv

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kfake"
)

// StartKafka starts an in-process single-broker kfake cluster listening on 127.0.0.1. Its
// address is c.ListenAddrs(). opts are applied after the defaults, so kfake.NumBrokers or
// kfake.Ports override them. The caller must call c.Close.
//
// The broker listens on port 0, so the kernel picks a free port when it binds: unlike a port from
// FreePort, nothing can take it in between.
func StartKafka(opts ...kfake.Opt) (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("start kfake cluster: %w", err)
	}
	return c, nil
}
