package publish

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/netsim"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

func benchEvents(n int) []*envelope.Event {
	evs := make([]*envelope.Event, n)
	for i := range evs {
		evs[i] = testEvent("s", pgoutput.LSN(0x100000+i*0x100), 1)
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
	spine := netsim.NewSpine(410 * time.Microsecond)
	defer spine.Close()
	b.Run("sequential-loopback", func(b *testing.B) {
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		for i := 0; i < b.N; i++ {
			start := time.Now()
			for _, ev := range evs {
				resp, err := hc.Post(spine.URL+"/events", "application/json", bytes.NewReader(ev.Body))
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
		url := spine.URL
		if rtt > 0 {
			p, err := netsim.NewProxy(spine.Addr, rtt)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			url = p.URL
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
