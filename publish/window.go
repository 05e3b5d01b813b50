package publish

import (
	"math"
	"time"
)

// The pipelining window is sized from what the link does: the bandwidth-
// delay product, the spine's delivery rate times the round trip, as TCP's
// BBR sizes its congestion window. A fixed window caps delivery at
// window/round trip: 32 requests across 10 ms is 3,200 events/s at best,
// and less once the spine's own service time is in every round trip; across
// 50 ms, 640. The window starts at initialWindow, and after every pipelined
// run is
//
//	windowGain × (highest delivery rate lately) × (lowest round trip lately) + windowSlack
//
// clamped to [minWindow, the configured maximum]. A window too small to keep
// the spine busy measures a rate of about window/round trip, so the next is
// about twice as large: it grows like TCP's slow start until the spine's
// rate is what limits. The bytes in flight stay bounded apart
// (MaxInFlightBytes), so a window never holds more than a spine or a proxy
// in front of it was given to hold.
const (
	initialWindow = 32
	minWindow     = 16
	windowGain    = 2.0
	windowSlack   = 2
	// The rate and round trip are the highest and lowest seen within this
	// long, so that a slower spine or a longer route is followed.
	windowMemory = 10 * time.Second
)

// windowSizer keeps the estimates. It is used by one goroutine at a time
// (the client's publishing one).
type windowSizer struct {
	limit  int
	window int
	rtt    time.Duration // lowest request → answer time seen
	rttAt  time.Time
	rate   float64 // highest answers per second over a run
	rateAt time.Time
}

func newWindowSizer(limit int) *windowSizer {
	return &windowSizer{limit: limit, window: min(initialWindow, limit)}
}

// size is the current window.
func (s *windowSizer) size() int { return s.window }

// latency records the time from writing a request to reading its answer.
func (s *windowSizer) latency(d time.Duration, now time.Time) {
	if d <= 0 {
		return
	}
	if s.rtt == 0 || d <= s.rtt || now.Sub(s.rttAt) > windowMemory {
		s.rtt, s.rttAt = d, now
	}
}

// failed halves the window after an answer that was not a verdict (a 429,
// a 503, a timeout, a broken connection): a spine in trouble gets fewer
// requests behind the failed one, and less to land late after it. The
// rate seen before is forgotten.
func (s *windowSizer) failed() {
	s.window = max(min(minWindow, s.limit), s.window/2)
	s.rate, s.rateAt = 0, time.Time{}
}

// run records a pipelined run: answers answered within elapsed (from the
// first write to the last answer), and sizes the next window.
func (s *windowSizer) run(answers int, elapsed time.Duration, now time.Time) {
	if answers < 2 || elapsed <= 0 {
		return
	}
	r := float64(answers) / elapsed.Seconds()
	if r >= s.rate || now.Sub(s.rateAt) > windowMemory {
		s.rate, s.rateAt = r, now
	}
	s.window = sizeWindow(s.rate, s.rtt, s.limit)
}

// sizeWindow is the window for a delivery rate (events/s) and round trip,
// at most limit.
func sizeWindow(rate float64, rtt time.Duration, limit int) int {
	bdp := windowGain * rate * rtt.Seconds()
	if math.IsNaN(bdp) || bdp > float64(limit) {
		return limit
	}
	return min(limit, max(windowSlack+int(math.Ceil(bdp)), minWindow))
}
