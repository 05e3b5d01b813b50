// Package netsim models the distance between the agent and the spine for
// benchmarks: a spine stand-in that appends one event at a time with a fixed
// service time, and a TCP proxy that delays every chunk by half a round
// trip in each direction. tc netem is not available on every machine the
// benchmarks run on; this needs only loopback.
package netsim

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Spine answers POST /events like audit-stream: one append at a time across
// all connections, each taking Service of CPU (a busy wait, so that the
// figure does not depend on timer resolution), and a 201 echoing the
// request's idempotency key, which the agent's client checks. GET /events
// answers an empty list (the client's read-back) and anything else 200.
type Spine struct {
	URL     string
	Addr    string // host:port, for a proxy in front
	Service time.Duration

	mu      sync.Mutex
	posts   atomic.Int64
	changes atomic.Int64
	srv     *httptest.Server
}

// NewSpine starts a spine stand-in. audit-stream-py's sequential rate was
// measured at 2,437 events/s: about 410µs per append.
func NewSpine(service time.Duration) *Spine {
	s := &Spine{Service: service}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL, s.Addr = s.srv.URL, s.srv.Listener.Addr().String()
	return s
}

// Posts is the number of events appended so far.
func (s *Spine) Posts() int64 { return s.posts.Load() }

// Changes is Posts without the trail's own events (KEY, SEAL).
func (s *Spine) Changes() int64 { return s.changes.Load() }

// Close stops the server.
func (s *Spine) Close() { s.srv.Close() }

func (s *Spine) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/events":
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		until := time.Now().Add(s.Service)
		for time.Now().Before(until) {
		}
		id := s.posts.Add(1)
		s.mu.Unlock()
		key := ""
		const marker = `"idempotency_key":"`
		if i := bytes.LastIndex(body, []byte(marker)); i >= 0 {
			rest := body[i+len(marker):]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				key = string(rest[:j])
			}
		}
		if !strings.HasPrefix(key, "pgaudit-cdc-") {
			s.changes.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"event_id":%d,"timestamp":"2026-01-01T00:00:00+00:00","kind":"other","source":"s","payload":{"metadata":{"idempotency_key":%q}},"prev_hash":"%064d","hash":"%064d"}`, id, key, 0, 0)
	case r.Method == http.MethodGet && r.URL.Path == "/events":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	default:
		w.WriteHeader(http.StatusOK)
	}
}

// Proxy forwards TCP connections to a target, delaying every chunk by half
// the round trip in each direction. Chunks are queued with their due time,
// so the delay never limits how many bytes are in flight (a window of
// pipelined requests crosses it in one trip, as on a real network).
type Proxy struct {
	URL string
	ln  net.Listener
	wg  sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port) with rtt added to every round trip.
func NewProxy(target string, rtt time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{URL: "http://" + ln.Addr().String(), ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pump(t, c, rtt/2)
			go pump(c, t, rtt/2)
		}
	}()
	return p, nil
}

// Close stops accepting connections; open ones end when either side closes.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func pump(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		b   []byte
		due time.Time
	}
	q := make(chan chunk, 4096)
	go func() {
		defer dst.Close()
		for c := range q {
			time.Sleep(time.Until(c.due))
			if _, err := dst.Write(c.b); err != nil {
				// Drain so the reader never blocks on a full queue.
				for range q {
				}
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{append([]byte(nil), buf[:n]...), time.Now().Add(delay)}
		}
		if err != nil {
			close(q)
			return
		}
	}
}
