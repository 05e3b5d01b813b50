package publish

import (
	"testing"
	"time"
)

func TestSizeWindow(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		rtt   time.Duration
		limit int
		want  int
	}{
		{2437, 500 * time.Microsecond, 1024, minWindow}, // loopback: the floor
		{2437, 10 * time.Millisecond, 1024, 2 + 49},     // 2 × 24.37, rounded up
		{2437, 50 * time.Millisecond, 1024, 2 + 244},    // 2 × 121.85
		{2437, 500 * time.Millisecond, 1024, 1024},      // capped
		{2437, 50 * time.Millisecond, 32, 32},           // a configured bound
		{100000, time.Second, 1024, 1024},               // huge: the bound
		{0, 10 * time.Millisecond, 1024, minWindow},     // nothing measured
		{2437, 10 * time.Millisecond, 4, 4},             // a bound below the floor
	} {
		if got := sizeWindow(tc.rate, tc.rtt, tc.limit); got != tc.want {
			t.Errorf("sizeWindow(%v/s, %s, %d) = %d, want %d", tc.rate, tc.rtt, tc.limit, got, tc.want)
		}
	}
}

// TestWindowGrowsToTheLink: a window too small for the link measures about
// window/round trip and roughly doubles each run, like slow start, until the
// spine's rate limits; a slower spine later shrinks it again once the old
// rate is forgotten.
func TestWindowGrowsToTheLink(t *testing.T) {
	const rtt = 50 * time.Millisecond
	const service = 410 * time.Microsecond // 2,437 events/s
	s := newWindowSizer(1024)
	now := time.Unix(1000, 0)
	var sizes []int
	for run := 0; run < 8; run++ {
		w := s.size()
		sizes = append(sizes, w)
		n := 8 * w
		// A sliding window of w: each answer after one round trip, at most
		// one per service time.
		elapsed := max(time.Duration(n)*service, time.Duration(n/w)*rtt) + rtt
		s.latency(rtt+service, now)
		now = now.Add(elapsed)
		s.run(n, elapsed, now)
	}
	if sizes[0] != initialWindow {
		t.Fatalf("first window %d, want %d", sizes[0], initialWindow)
	}
	final := sizes[len(sizes)-1]
	if bdp := int(rtt / service); final < bdp || final > 3*bdp {
		t.Fatalf("windows %v: settled at %d, want between the link's %d and 3×", sizes, final, bdp)
	}
	for i := 1; i < 4; i++ {
		if sizes[i] < sizes[i-1] {
			t.Fatalf("windows %v: shrank while growing", sizes)
		}
	}
	// The spine gets ten times slower: after windowMemory the old rate and
	// round trip are forgotten.
	now = now.Add(windowMemory + time.Second)
	for run := 0; run < 3; run++ {
		s.latency(rtt+10*service, now)
		s.run(500, 500*10*service, now)
		now = now.Add(time.Second)
	}
	if got := s.size(); got >= final {
		t.Fatalf("window %d after the spine slowed ten times, want below %d", got, final)
	}
}

func TestWindowHalvesOnFailure(t *testing.T) {
	s := newWindowSizer(1024)
	now := time.Unix(1000, 0)
	s.latency(50*time.Millisecond, now)
	s.run(2000, time.Second, now) // 2,000/s across 50 ms: 202
	if s.size() != 202 {
		t.Fatalf("window %d, want 202", s.size())
	}
	s.failed()
	if s.size() != 101 {
		t.Fatalf("after a failure: %d, want 101", s.size())
	}
	for range 10 {
		s.failed()
	}
	if s.size() != minWindow {
		t.Fatalf("after many failures: %d, want the floor %d", s.size(), minWindow)
	}
	small := newWindowSizer(4)
	small.failed()
	if small.size() != 4 {
		t.Fatalf("a bound below the floor: %d, want 4", small.size())
	}
}
