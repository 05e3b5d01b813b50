package netsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestProxyDelaysAndForwards: a request through the proxy gets the spine's
// answer intact, and a round trip takes at least the added delay.
func TestProxyDelaysAndForwards(t *testing.T) {
	spine := NewSpine(0)
	defer spine.Close()
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
		p, err := NewProxy(spine.Addr, rtt)
		if err != nil {
			t.Fatal(err)
		}
		body := `{"kind":"other","payload":{"metadata":{"idempotency_key":"k-` + rtt.String() + `"}},"pad":"` + strings.Repeat("x", 200<<10) + `"}`
		start := time.Now()
		resp, err := http.Post(p.URL+"/events", "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("rtt %s: HTTP %d: %s", rtt, resp.StatusCode, got)
		}
		var ev struct {
			Payload struct {
				Metadata struct {
					Key string `json:"idempotency_key"`
				} `json:"metadata"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(got, &ev); err != nil || ev.Payload.Metadata.Key != "k-"+rtt.String() {
			t.Fatalf("rtt %s: answer %q (%v), want the request's idempotency key echoed", rtt, got, err)
		}
		if took < rtt {
			t.Errorf("rtt %s: the round trip took %s, less than the added delay", rtt, took)
		}
		p.Close()
	}
	if n := spine.Posts(); n != 2 {
		t.Errorf("the spine appended %d events, want 2", n)
	}
}

// TestSpineServesOneAtATime: the service time is paid per append, across
// connections.
func TestSpineServesOneAtATime(t *testing.T) {
	const service = 5 * time.Millisecond
	spine := NewSpine(service)
	defer spine.Close()
	start := time.Now()
	done := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			resp, err := http.Post(spine.URL+"/events", "application/json", strings.NewReader(`{}`))
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < 4*service {
		t.Errorf("4 concurrent appends took %s, want at least %s (one at a time)", took, 4*service)
	}
}
