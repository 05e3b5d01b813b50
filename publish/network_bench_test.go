package publish

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
)

// serviceSpine answers POST /events like the spine, one request at a time
// across all connections, taking service per append: a stand-in for
// audit-stream-py, whose sequential rate was measured at 2,437 events/s
// (about 0.41 ms per append).
type serviceSpine struct {
	mu      sync.Mutex
	n       atomic.Int64
	service time.Duration
	srv     *httptest.Server
}

func newServiceSpine(service time.Duration) *serviceSpine {
	s := &serviceSpine{service: service}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost:
			body, _ := io.ReadAll(r.Body)
			s.mu.Lock()
			until := time.Now().Add(s.service)
			for time.Now().Before(until) {
			}
			id := s.n.Add(1)
			s.mu.Unlock()
			key := ""
			const marker = `"idempotency_key":"`
			if i := bytes.LastIndex(body, []byte(marker)); i >= 0 {
				rest := body[i+len(marker):]
				key = string(rest[:bytes.IndexByte(rest, '"')])
			}
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"event_id":%d,"timestamp":"2026-01-01T00:00:00+00:00","kind":"other","source":"s","payload":{"metadata":{"idempotency_key":%q}},"prev_hash":"%064d","hash":"%064d"}`, id, key, 0, 0)
		case r.URL.Path == "/events":
			w.Write([]byte("[]"))
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	return s
}

// delayProxy forwards TCP connections to target, delaying every chunk by
// half the round trip in each direction. Chunks are queued with their due
// time, so the delay never limits how many bytes are in flight.
func delayProxy(tb testing.TB, target string, rtt time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	pump := func(dst, src net.Conn) {
		type chunk struct {
			b   []byte
			due time.Time
		}
		q := make(chan chunk, 4096)
		go func() {
			for c := range q {
				time.Sleep(time.Until(c.due))
				if _, err := dst.Write(c.b); err != nil {
					break
				}
			}
			dst.Close()
		}()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{append([]byte(nil), buf[:n]...), time.Now().Add(rtt / 2)}
			}
			if err != nil {
				close(q)
				return
			}
		}
	}
	go func() {
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
			go pump(t, c)
			go pump(c, t)
		}
	}()
	return "http://" + ln.Addr().String()
}

func benchEvents(n int) []*decode.Event {
	evs := make([]*decode.Event, n)
	for i := range evs {
		evs[i] = testEvent("s", decode.LSN(0x100000+i*0x100), 1)
	}
	return evs
}

// BenchmarkNetworkDelivery: events/s delivered by PublishBatch through a
// delay proxy at several round trips and windows, and by a sequential
// keep-alive client on loopback straight to the same spine (the spine's own
// sequential rate, the yardstick of issue 11). make bench runs it.
func BenchmarkNetworkDelivery(b *testing.B) {
	const n = 2000
	evs := benchEvents(n)
	spine := newServiceSpine(410 * time.Microsecond)
	defer spine.srv.Close()
	b.Run("sequential-loopback", func(b *testing.B) {
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		for i := 0; i < b.N; i++ {
			start := time.Now()
			for _, ev := range evs {
				resp, err := hc.Post(spine.srv.URL+"/events", "application/json", bytes.NewReader(ev.Body))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
		}
	})
	for _, rtt := range []time.Duration{0, 500 * time.Microsecond, 2700 * time.Microsecond, 10 * time.Millisecond} {
		url := spine.srv.URL
		if rtt > 0 {
			url = delayProxy(b, spine.srv.Listener.Addr().String(), rtt)
		}
		for _, w := range []int{1, 32, 128} {
			b.Run(fmt.Sprintf("rtt=%s/window=%d", rtt, w), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					c, err := NewClient(ClientConfig{URL: url, Timeout: 30 * time.Second, MaxInFlight: w})
					if err != nil {
						b.Fatal(err)
					}
					c.SetIdentity("7301", fmt.Sprintf("bench%d", i))
					start := time.Now()
					if err := c.PublishBatch(context.Background(), evs, func(int, error) {}); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
					c.closePipe()
				}
			})
		}
	}
}
