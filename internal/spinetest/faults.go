package spinetest

import (
	"fmt"
	"math/rand"
	"net/http"
	"time"
)

// Fault is a failure the double injects into a POST /events. Faults never
// apply to the other endpoints (SetDown does).
type Fault int

const (
	// FaultNone lets the request through untouched.
	FaultNone Fault = iota
	// Fault503 answers 503 {"detail":"Service Unavailable"} without appending.
	Fault503
	// Fault500 answers 500 "Internal Server Error" (text/plain, as Starlette
	// does for an unhandled exception) without appending.
	Fault500
	// Fault429 answers 429 {"detail":"Too Many Requests"} with
	// "Retry-After: 1", without appending.
	Fault429
	// FaultDropBefore closes the connection without reading the request or
	// appending: the client gets a transport error.
	FaultDropBefore
	// FaultDropAfter reads and processes the request normally (a valid event
	// is appended), then closes the connection without answering: the
	// ambiguous failure, where the client gets a transport error although its
	// event is in the chain.
	FaultDropAfter
	// FaultStall reads the request, waits for the stall duration (SetStall,
	// default DefaultStall) or until the request's context ends (client gone),
	// then processes it normally: the event is appended even when the client
	// has given up.
	FaultStall
	// FaultReject answers 422 with a FastAPI-shaped body, as if the spine had
	// refused the payload, without appending.
	FaultReject
)

// DefaultStall is how long FaultStall waits when SetStall was never called.
const DefaultStall = 10 * time.Second

// randomDefault is the fault set SetRandomFaults uses when given none.
var randomDefault = []Fault{Fault503, Fault500, Fault429, FaultDropBefore, FaultDropAfter, FaultReject}

// String returns the constant's name without the "Fault" prefix ("503",
// "DropAfter", ...), convenient for t.Run names.
func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "None"
	case Fault503:
		return "503"
	case Fault500:
		return "500"
	case Fault429:
		return "429"
	case FaultDropBefore:
		return "DropBefore"
	case FaultDropAfter:
		return "DropAfter"
	case FaultStall:
		return "Stall"
	case FaultReject:
		return "Reject"
	}
	return fmt.Sprintf("Fault(%d)", int(f))
}

// FailNext makes the next n POST /events get fault f, after any faults
// already queued by earlier calls (calls queue up: FailNext(1, Fault503)
// then FailNext(1, FaultDropAfter) fails the next POST with 503 and the one
// after it with DropAfter). Queued faults take precedence over random ones;
// queuing FaultNone lets those requests through untouched and shields them
// from random faults. n <= 0 does nothing.
func (s *Server) FailNext(n int, f Fault) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i := 0; i < n; i++ {
		s.queue = append(s.queue, f)
	}
}

// SetRandomFaults gives each POST /events not covered by FailNext a fault
// with probability p, drawn uniformly from faults (default: 503, 500, 429,
// DropBefore, DropAfter and Reject; Stall only when listed). The draws come
// from a generator seeded with seed and are taken in arrival order, so the
// same seed and the same sequence of POSTs yield the same faults.
// p <= 0 disables random faults; p >= 1 faults every POST.
func (s *Server) SetRandomFaults(p float64, seed int64, faults ...Fault) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if p <= 0 {
		s.randP, s.rng, s.randFaults = 0, nil, nil
		return
	}
	if len(faults) == 0 {
		faults = randomDefault
	}
	s.randP = p
	s.rng = rand.New(rand.NewSource(seed))
	s.randFaults = append([]Fault(nil), faults...)
}

// SetStall sets how long FaultStall waits (DefaultStall until called).
func (s *Server) SetStall(d time.Duration) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.stall = d
}

// SetDown simulates the spine being unreachable: while down, every request
// to every endpoint has its connection closed at once, before any answer.
// Requests refused this way are not counted by Requests and consume no
// queued or random fault.
func (s *Server) SetDown(down bool) {
	s.down.Store(down)
}

// Faults returns how many times each fault was injected (FaultNone is never
// counted; SetDown refusals are not faults).
func (s *Server) Faults() map[Fault]int64 {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	out := make(map[Fault]int64, len(s.counts))
	for f, n := range s.counts {
		out[f] = n
	}
	return out
}

// nextFault picks the fault of the POST being served and counts it.
func (s *Server) nextFault() (Fault, time.Duration) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	f := FaultNone
	switch {
	case len(s.queue) > 0:
		f = s.queue[0]
		s.queue = s.queue[1:]
	case s.randP > 0 && s.rng != nil:
		// Always two draws per request, so the n-th POST's fate depends only
		// on the seed and n.
		hit := s.rng.Float64() < s.randP
		pick := s.randFaults[s.rng.Intn(len(s.randFaults))]
		if hit {
			f = pick
		}
	}
	if f != FaultNone {
		s.counts[f]++
	}
	return f, s.stall
}

// drop closes the request's connection without writing anything.
func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	// Not hijackable (HTTP/2): abort the handler, which resets the stream.
	panic(http.ErrAbortHandler)
}
