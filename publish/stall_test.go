package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// A read-back answer that keeps coming is read whole, however long it takes
// (a window of large rows can be hundreds of MB); one where nothing arrives
// for the timeout fails, and says so.
func TestReadBackTimesOutOnStallsOnly(t *testing.T) {
	const timeout = 600 * time.Millisecond
	for _, tc := range []struct {
		name  string
		gap   time.Duration // between two events of the answer
		fails bool
	}{
		{"slow but steady", timeout / 4, false},
		{"stalled", 3 * timeout, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, "[")
				for i := 1; i <= 8; i++ { // 8 gaps: 2 timeouts in all when steady
					if i > 1 {
						fmt.Fprint(w, ",")
					}
					w.(http.Flusher).Flush()
					select {
					case <-time.After(tc.gap):
					case <-r.Context().Done():
						return
					}
					fmt.Fprintf(w, `{"event_id":%d,"source":"s","payload":{"metadata":{"idempotency_key":"k%d"}}}`, i, i)
				}
				fmt.Fprint(w, "]")
			}))
			defer srv.Close()
			c, err := NewClient(ClientConfig{URL: srv.URL, Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			err = c.ReadBack(context.Background(), "s", func(Stored) { n++ })
			if tc.fails {
				if err == nil || !strings.Contains(err.Error(), "sent nothing for 600ms") {
					t.Fatalf("got %v after %d events, want the stall named", err, n)
				}
				return
			}
			if err != nil || n != 8 {
				t.Fatalf("got %d events, %v; want all 8", n, err)
			}
		})
	}
}

// A read-back answer cut off mid-array (the connection dropped) is an
// error, never a short trail: events it did not list could be sent again.
func TestReadBackCutOffIsAnError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `[{"event_id":1,"source":"s","payload":{"metadata":{"idempotency_key":"k1"}}}`)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops
	}))
	defer srv.Close()
	c, err := NewClient(ClientConfig{URL: srv.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = c.ReadBack(context.Background(), "s", func(Stored) { n++ })
	if err == nil || !strings.Contains(err.Error(), "the spine's answer ended early, after 1 events") {
		t.Fatalf("got %v after %d events, want the cut named", err, n)
	}
}

// The pipelined connection bounds silence, not size: a body that keeps
// going through a slow link is written whole, however long it takes, and
// an answer that keeps coming is read whole; a link that stops moving
// fails after the timeout, and a stop ends a blocked write at once and
// every later one.
func TestStallConnBoundsSilenceNotSize(t *testing.T) {
	const timeout = 150 * time.Millisecond
	// net.Pipe has no buffers: a write returns only as the peer reads it.
	pipe := func() (*stallConn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return &stallConn{Conn: a, timeout: timeout}, b
	}
	// drip reads (or writes, with write set) piece bytes every gap, n times.
	drip := func(peer net.Conn, piece int, gap time.Duration, n int, write bool) {
		buf := make([]byte, piece)
		for range n {
			time.Sleep(gap)
			var err error
			if write {
				_, err = peer.Write(buf)
			} else {
				_, err = io.ReadFull(peer, buf)
			}
			if err != nil {
				return
			}
		}
	}

	t.Run("a slow but steady write", func(t *testing.T) {
		c, peer := pipe()
		const pieces, piece = 40, 64 << 10 // 40 gaps of timeout/8: 5 timeouts in all; 4 per 256 KiB piece
		go drip(peer, piece, timeout/8, pieces, false)
		start := time.Now()
		if n, err := c.Write(make([]byte, pieces*piece)); err != nil {
			t.Fatalf("wrote %d bytes in %s, then: %v", n, time.Since(start), err)
		}
		if d := time.Since(start); d < 3*timeout {
			t.Fatalf("the write took %s: the test did not outlast the timeout", d)
		}
	})
	t.Run("a write that stops moving", func(t *testing.T) {
		c, peer := pipe()
		go drip(peer, 64<<10, timeout/5, 3, false) // then nothing
		start := time.Now()
		_, err := c.Write(make([]byte, 2<<20))
		if !isTimeout(err) {
			t.Fatalf("write: %v, want a timeout", err)
		}
		if d := time.Since(start); d > 3*timeout {
			t.Fatalf("the stalled write failed after %s, want about %s of silence", d, timeout)
		}
	})
	t.Run("a slow but steady answer", func(t *testing.T) {
		c, peer := pipe()
		const pieces, piece = 12, 1 << 10
		go drip(peer, piece, timeout/3, pieces, true)
		start := time.Now()
		if _, err := io.ReadFull(c, make([]byte, pieces*piece)); err != nil {
			t.Fatalf("read after %s: %v", time.Since(start), err)
		}
		if d := time.Since(start); d < 3*timeout {
			t.Fatalf("the read took %s: the test did not outlast the timeout", d)
		}
	})
	t.Run("an answer that stops coming", func(t *testing.T) {
		c, peer := pipe()
		go drip(peer, 1<<10, timeout/3, 2, true)
		if _, err := io.ReadFull(c, make([]byte, 4<<10)); !isTimeout(err) {
			t.Fatalf("read: %v, want a timeout", err)
		}
	})
	t.Run("stop ends a blocked write and every later one", func(t *testing.T) {
		c, peer := pipe()
		go drip(peer, 64<<10, timeout/50, 1<<20, false) // steady, far inside the timeout: only stop ends it
		done := make(chan error, 1)
		go func() {
			_, err := c.Write(make([]byte, 16<<20)) // 256 gaps: about 4 times the wait before stop
			done <- err
		}()
		time.Sleep(2 * timeout)
		select {
		case err := <-done:
			t.Fatalf("the write ended before stop: %v", err)
		default:
		}
		c.stop()
		select {
		case err := <-done:
			if !isTimeout(err) {
				t.Fatalf("write after stop: %v, want a timeout", err)
			}
		case <-time.After(timeout):
			t.Fatal("stop did not end the blocked write")
		}
		if _, err := c.Write([]byte("x")); !isTimeout(err) {
			t.Fatalf("a write after stop: %v, want it refused", err)
		}
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("a read after stop: %v, want it refused", err)
		}
	})
}

// A stop that lands after its window was read leaves the connection stopped
// for good: the next window dials afresh instead of failing on it.
func TestStoppedConnectionIsNotReused(t *testing.T) {
	spine := spinetest.Start(t)
	var retries atomic.Int32
	c, err := NewClient(ClientConfig{URL: spine.URL(), Timeout: 3 * time.Second, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		MaxInFlight: 16, Hooks: Hooks{Retry: func(string, time.Duration) { retries.Add(1) }}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity("7301", "slot")
	pc, err := c.dialPipe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pc.conn.stop()
	evs := batchOf(3)
	for i, err := range publishBatch(t, c, evs) {
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	if n := retries.Load(); n != 0 || c.pipe == pc {
		t.Fatalf("%d retries: the stopped connection was used again", n)
	}
	if dup, missing, disorder, late := chainReport(t, spine, evs, nil); dup+missing+disorder+late != 0 {
		t.Fatalf("dup %d, missing %d, out of order %d, late %d", dup, missing, disorder, late)
	}
}

// A large event through a slow link is delivered by one POST, however long
// the upload takes, pipelined or not: the timeout bounds silence, not size.
// (Before, a POST was bounded as a whole, and the kernel took megabytes of
// it at once without a sign of progress: such an event was given up on and
// sent again, forever.)
func TestSlowUploadIsNotCutOff(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipelined=%t", pipelined), func(t *testing.T) {
			testSlowUpload(t, pipelined)
		})
	}
}

func testSlowUpload(t *testing.T, pipelined bool) {
	const timeout = 500 * time.Millisecond
	ev := testEvent("s", 0x1000, 1)
	ev.New = fmt.Appendf(nil, `{"id":1,"v":%q}`, strings.Repeat("x", 3<<20))
	ev.Finish()
	var posts atomic.Int32
	// The link: 32 KiB every 20 ms (1.6 MB/s), holding 64 KiB (the
	// receiving socket's buffer). The sending side keeps the kernel's
	// defaults: it may queue megabytes, which without limitUnsent made the
	// upload look stalled.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fmt.Fprint(w, "[]") // the read-back: nothing there yet
			return
		}
		posts.Add(1)
		buf := make([]byte, 32<<10)
		for {
			time.Sleep(20 * time.Millisecond)
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"event_id":1,"hash":"%s","prev_hash":"%s","kind":"other","source":"s","timestamp":"2026-11-22T10:00:00+00:00","payload":{"metadata":{"idempotency_key":%q}}}`,
			strings.Repeat("a", 64), strings.Repeat("0", 64), ev.Key)
	}))
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)

	var retries atomic.Int32
	c, err := NewClient(ClientConfig{URL: srv.URL, Timeout: timeout, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		MaxInFlight: 16, Hooks: Hooks{Retry: func(string, time.Duration) { retries.Add(1) }}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity("7301", "slot")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if pipelined {
		err = c.PublishBatch(ctx, []*envelope.Event{ev}, func(_ int, e error) { err = errors.Join(err, e) })
	} else {
		err = c.Publish(ctx, ev)
	}
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if d := time.Since(start); d < 3*timeout {
		t.Fatalf("the upload took %s: the test did not outlast the timeout", d)
	}
	if n, p := retries.Load(), posts.Load(); n != 0 || p != 1 {
		t.Fatalf("%d retries, %d POSTs: the upload was cut off", n, p)
	}
}

// smallBuffers gives every accepted connection a 64 KiB receive buffer.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	return c, err
}
