package spinetest

import (
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strconv"
	"time"
)

// Fault is a failure the double injects into a POST /events (FailNext,
// SetRandomFaults) or into a GET /events, the read-back producers use
// (FailNextRead). Faults never apply to the other endpoints (SetDown does).
//
// Besides failures of the spine itself, the faults include answers the spine
// never gives but that something standing in its place does: a proxy, an
// ingress or a login page answering 201 with HTML, 401, 403, 404, 405 or a
// redirect. A producer must not mistake those for the spine's verdict on its
// event.
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
	// Fault201HTML answers 201 with an HTML page without appending: a proxy
	// or a misrouted ingress that answers on the spine's behalf without
	// forwarding. A producer that trusts the status alone loses the event.
	Fault201HTML
	// Fault201HTMLAfter processes the request normally (a valid event is
	// appended), then answers 201 with an HTML page instead of the stored
	// event: only a read-back tells the producer that its event is in the
	// chain and must not be sent again.
	Fault201HTMLAfter
	// FaultStallBody processes the request normally (a valid event is
	// appended), starts the answer with its real status and Content-Length,
	// writes its first bytes (SetStallBytes, default DefaultStallBytes), waits
	// for the stall duration (SetStall) or until the client leaves, then
	// closes the connection: the client reads a truncated body.
	FaultStallBody
	// Fault401 answers 401 {"detail":"Not authenticated"} with
	// "WWW-Authenticate: Bearer", without appending: an authenticating proxy
	// refusing a missing or wrong token.
	Fault401
	// Fault403 answers 403 {"detail":"Forbidden"} without appending.
	Fault403
	// Fault404 answers 404 {"detail":"Not Found"} without appending: a base
	// URL with a wrong path.
	Fault404
	// Fault405 answers 405 {"detail":"Method Not Allowed"} with "Allow: GET"
	// without appending: something other than the spine serves the URL.
	Fault405
	// Fault302 answers 302 Found without reading the request or appending,
	// with Location set by SetRedirect (default: /login on the double's own
	// host), as a single-sign-on proxy or an http-to-https redirect does.
	Fault302
	// FaultSlow reads the request, waits for the whole stall duration
	// (SetStall) even when the client has left, as an ASGI server does (a
	// handler is not cancelled when its client disconnects), then
	// processes it normally: the event is appended after the client gave
	// up on it.
	FaultSlow
)

// DefaultStall is how long FaultStall and FaultStallBody wait when SetStall
// was never called.
const DefaultStall = 10 * time.Second

// DefaultStallBytes is how much of its answer FaultStallBody writes before
// stalling when SetStallBytes was never called: enough to start the JSON
// object, not enough to finish any event.
const DefaultStallBytes = 16

// htmlPage is the body of Fault201HTML and Fault201HTMLAfter.
const htmlPage = "<!DOCTYPE html>\n<html><head><title>Created</title></head><body><p>Your request has been accepted.</p></body></html>\n"

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
	case Fault201HTML:
		return "201HTML"
	case Fault201HTMLAfter:
		return "201HTMLAfter"
	case FaultStallBody:
		return "StallBody"
	case FaultSlow:
		return "Slow"
	case Fault401:
		return "401"
	case Fault403:
		return "403"
	case Fault404:
		return "404"
	case Fault405:
		return "405"
	case Fault302:
		return "302"
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

// FailNextRead makes the next n GET /events get fault f, after any read
// faults already queued; it is the read-back a producer does to find what it
// delivered. Fault503, Fault500, Fault429, FaultDropBefore, Fault401,
// Fault403, Fault404, Fault405 and Fault302 answer as they do for a POST; the
// other faults concern an append and let the read through untouched (and are
// not counted). Read faults are never drawn at random. n <= 0 does nothing.
func (s *Server) FailNextRead(n int, f Fault) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i := 0; i < n; i++ {
		s.readQueue = append(s.readQueue, f)
	}
}

// SetRandomFaults gives each POST /events not covered by FailNext a fault
// with probability p, drawn uniformly from faults (default: 503, 500, 429,
// DropBefore, DropAfter and Reject; the others only when listed). The draws
// come from a generator seeded with seed and are taken in arrival order, so
// the same seed and the same sequence of POSTs yield the same faults.
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

// SetStall sets how long FaultStall and FaultStallBody wait (DefaultStall
// until called).
func (s *Server) SetStall(d time.Duration) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.stall = d
}

// SetStallBytes sets how many bytes of its answer FaultStallBody writes
// before stalling (DefaultStallBytes until called; n < 0 counts as 0). The
// answer is always cut at least one byte short of its Content-Length.
func (s *Server) SetStallBytes(n int) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.stallBytes = max(n, 0)
}

// SetRedirect sets the Location of Fault302's answer; "" restores the
// default, http://HOST/login on the double's own host.
func (s *Server) SetRedirect(location string) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.redirect = location
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

// faultConfig is the fault settings a request is served with.
type faultConfig struct {
	stall      time.Duration
	stallBytes int
	redirect   string
}

// nextFault picks the fault of the POST being served and counts it.
func (s *Server) nextFault() (Fault, faultConfig) {
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
	return f, s.configLocked()
}

// nextReadFault picks the fault of the GET /events being served, FaultNone
// when none is queued or the queued one does not apply to a read, and counts
// it.
func (s *Server) nextReadFault() (Fault, faultConfig) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if len(s.readQueue) == 0 {
		return FaultNone, faultConfig{}
	}
	f := s.readQueue[0]
	s.readQueue = s.readQueue[1:]
	switch f {
	case Fault503, Fault500, Fault429, FaultDropBefore, Fault401, Fault403, Fault404, Fault405, Fault302:
		s.counts[f]++
		return f, s.configLocked()
	}
	return FaultNone, faultConfig{}
}

func (s *Server) configLocked() faultConfig {
	return faultConfig{stall: s.stall, stallBytes: s.stallBytes, redirect: s.redirect}
}

// refuse answers r for the faults that leave the chain alone whatever the
// request holds, and reports whether f was one of them. The request body is
// not read: a proxy refusing a request does not wait for it either.
func refuse(w http.ResponseWriter, r *http.Request, f Fault, cfg faultConfig) bool {
	switch f {
	case Fault503:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"detail": "Service Unavailable"})
	case Fault500:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, "Internal Server Error")
	case Fault429:
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"detail": "Too Many Requests"})
	case FaultDropBefore:
		drop(w)
	case Fault401:
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeJSON(w, http.StatusUnauthorized, map[string]any{"detail": "Not authenticated"})
	case Fault403:
		writeJSON(w, http.StatusForbidden, map[string]any{"detail": "Forbidden"})
	case Fault404:
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
	case Fault405:
		methodNotAllowed(w, "GET")
	case Fault302:
		loc := cfg.redirect
		if loc == "" {
			loc = "http://" + r.Host + "/login"
		}
		w.Header().Set("Location", loc)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusFound)
		io.WriteString(w, `<a href="`+loc+`">Found</a>.`)
	default:
		return false
	}
	return true
}

// pause waits for d, until the client leaves or until the server shuts down.
func (s *Server) pause(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	case <-s.closing:
	}
}

// writeHTML201 answers 201 with an HTML page, as a proxy would.
func writeHTML201(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, htmlPage)
}

// writeStalled starts the answer (status, Content-Length of the whole body),
// writes its first n bytes, waits as FaultStall does and closes the
// connection.
func (s *Server) writeStalled(w http.ResponseWriter, r *http.Request, status int, body []byte, cfg faultConfig) {
	n := min(cfg.stallBytes, len(body)-1)
	if n < 0 {
		n = 0
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body[:n])
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.pause(r, cfg.stall)
	drop(w)
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
