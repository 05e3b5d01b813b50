// Package natstest runs a real NATS JetStream cluster on loopback for
// tests: several nats-server instances in this process, each with a store
// directory of its own, routed to each other. Servers are stopped and
// started again on the same ports and stores, so tests can stop a stream's
// leader, one server for good, or all of them.
package natstest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a JetStream cluster of in-process servers.
type Cluster struct {
	t       testing.TB
	opts    []*server.Options
	servers []*server.Server // nil: stopped
}

// Options adjusts each server's options before it starts (a smaller
// max_payload, accounts, ...).
type Options func(i int, o *server.Options)

// Start starts n servers (n ≥ 3 for a quorum that survives one loss) and
// waits until JetStream has a meta leader. They are shut down at the end
// of the test.
func Start(t testing.TB, n int, adjust ...Options) *Cluster {
	t.Helper()
	ports := freePorts(t, 2*n)
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	c := &Cluster{t: t, servers: make([]*server.Server, n)}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "pgaudit", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			// Sync writes would cost each test seconds for nothing: the
			// tests stop servers, never the machine.
			SyncAlways: false,
		}
		if n == 1 {
			o.Cluster, o.Routes = server.ClusterOpts{}, nil
		}
		for _, a := range adjust {
			a(i, o)
		}
		c.opts = append(c.opts, o)
	}
	for i := range n {
		c.Restart(i)
	}
	t.Cleanup(c.StopAll)
	c.WaitMetaLeader(30 * time.Second)
	return c
}

// URLs are the client URLs of every server, running or not.
func (c *Cluster) URLs() []string {
	var out []string
	for _, o := range c.opts {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return out
}

// Restart starts server i again (or the first time) on its port and store.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.servers[i] != nil {
		return
	}
	o := *c.opts[i]
	s, err := server.NewServer(&o)
	if err != nil {
		c.t.Fatalf("nats server %d: %v", i+1, err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		c.t.Fatalf("nats server %d did not start", i+1)
	}
	c.servers[i] = s
}

// Stop shuts server i down.
func (c *Cluster) Stop(i int) {
	if s := c.servers[i]; s != nil {
		s.Shutdown()
		s.WaitForShutdown()
		c.servers[i] = nil
	}
}

// StopAll shuts every server down.
func (c *Cluster) StopAll() {
	for i := range c.servers {
		c.Stop(i)
	}
}

// StreamLeader is the index of the server leading stream in the global
// account, or -1.
func (c *Cluster) StreamLeader(stream string) int {
	for i, s := range c.servers {
		if s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits until a running server leads JetStream's meta group
// and sees every running server online: until then a stream of as many
// replicas as servers is refused ("no suitable peers for placement").
func (c *Cluster) WaitMetaLeader(d time.Duration) {
	c.t.Helper()
	running := 0
	for _, s := range c.servers {
		if s != nil {
			running++
		}
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, s := range c.servers {
			if s == nil {
				continue
			}
			if len(c.servers) == 1 || (s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) >= running) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("no JetStream meta leader seeing %d servers online after %s", running, d)
}

// WaitStreamLeader waits until a running server leads stream and returns
// its index.
func (c *Cluster) WaitStreamLeader(stream string, d time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if i := c.StreamLeader(stream); i >= 0 {
			return i
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("no leader for stream %s after %s", stream, d)
	return -1
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
