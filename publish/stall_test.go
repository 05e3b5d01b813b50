package publish

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
	if err == nil || !strings.Contains(err.Error(), "the spine's answer ended after 1 events") {
		t.Fatalf("got %v after %d events, want the cut named", err, n)
	}
}
