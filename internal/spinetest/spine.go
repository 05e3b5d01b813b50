package spinetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// GenesisHash is the prev_hash of the first event of a chain: 64 zeros. GET
// /stats also reports it as latest_hash while the chain is empty.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// Limits of GET /events?limit=N.
const (
	DefaultLimit = 1000
	MaxLimit     = 100000
)

// maxIntDigits is CPython's default int_max_str_digits: json.loads of an
// integer literal with more digits raises ValueError, which FastAPI turns
// into 400 "There was an error parsing the body".
const maxIntDigits = 4300

// DefaultKinds are the EventKind values of audit-stream v0.1, in the order
// the contract lists them.
var DefaultKinds = []string{
	"decision_card_drafted",
	"decision_card_signed",
	"decision_card_status_changed",
	"policy_bundle_registered",
	"request_denied",
	"request_allowed",
	"contract_promoted",
	"contract_deprecated",
	"contract_compatibility_failed",
	"watch_created",
	"watch_drifted",
	"watch_validity_flipped",
	"incident_filed",
	"remediation_planned",
	"attestation_verified",
	"attestation_tampered",
	"flag_swapped",
	"shadow_divergence_recorded",
	"tool_invocation_allowed",
	"tool_invocation_denied",
	"tool_invocation_required_approval",
	"other",
}

// Event is one stored event of the chain, in the shape the spine returns it.
type Event struct {
	EventID   int64          `json:"event_id"`
	Timestamp string         `json:"timestamp"`
	Kind      string         `json:"kind"`
	Source    string         `json:"source"`
	Payload   map[string]any `json:"payload"` // decoded with UseNumber
	PrevHash  string         `json:"prev_hash"`
	Hash      string         `json:"hash"`
}

// MarshalJSON writes the event the way the spine's responses do: numbers of
// the payload in the form Python re-serialises them (12.50 becomes 12.5,
// 1E2 becomes 100.0), non-ASCII characters as UTF-8, a nil payload as {}.
// Non-finite floats (from a literal such as 1e999) are written as null.
func (e Event) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	if err := writeEvent(&buf, e); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// UnmarshalJSON decodes an event with json.Decoder.UseNumber, so that the
// payload's numbers stay json.Number and Hash of the decoded event equals
// the hash the spine computed.
func (e *Event) UnmarshalJSON(b []byte) error {
	type plain Event
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&p); err != nil {
		return err
	}
	*e = Event(p)
	return nil
}

func writeEvent(buf *bytes.Buffer, e Event) error {
	buf.WriteString(`{"event_id":`)
	buf.WriteString(strconv.FormatInt(e.EventID, 10))
	buf.WriteString(`,"timestamp":`)
	writeString(buf, e.Timestamp, false)
	buf.WriteString(`,"kind":`)
	writeString(buf, e.Kind, false)
	buf.WriteString(`,"source":`)
	writeString(buf, e.Source, false)
	buf.WriteString(`,"payload":`)
	var payload any = e.Payload
	if e.Payload == nil {
		payload = map[string]any{}
	}
	if err := writeValue(buf, payload, false); err != nil {
		return err
	}
	buf.WriteString(`,"prev_hash":`)
	writeString(buf, e.PrevHash, false)
	buf.WriteString(`,"hash":`)
	writeString(buf, e.Hash, false)
	buf.WriteByte('}')
	return nil
}

// Server is an in-process double of the audit-stream spine. It serves the
// contract's endpoints through ServeHTTP and lets tests inspect the chain and
// inject faults into POST /events and the read-back GET /events. All
// methods are safe for concurrent use.
type Server struct {
	mu     sync.Mutex // guards events, kinds, kindSet
	events []Event
	kinds  []string
	kindOK map[string]bool

	requests atomic.Int64
	down     atomic.Bool

	fmu        sync.Mutex // guards the fault state below
	queue      []Fault
	readQueue  []Fault
	randP      float64
	rng        *rand.Rand
	randFaults []Fault
	stall      time.Duration
	stallBytes int
	redirect   string
	counts     map[Fault]int64

	now     func() time.Time
	closing chan struct{} // closed when Start's server shuts down
	ts      *httptest.Server
}

// New returns a spine double with an empty chain accepting kinds, or
// DefaultKinds when none are given. Serve it with Start, or mount it as an
// http.Handler.
func New(kinds ...string) *Server {
	s := &Server{
		stall:      DefaultStall,
		stallBytes: DefaultStallBytes,
		counts:     map[Fault]int64{},
		now:        time.Now,
		closing:    make(chan struct{}),
	}
	s.SetKinds(kinds...)
	return s
}

// Start returns a new Server (see New) served by an httptest.Server on
// 127.0.0.1; the listener is shut down by t.Cleanup, which also cuts short
// any FaultStall in progress. URL returns its base URL.
func Start(t testing.TB, kinds ...string) *Server {
	t.Helper()
	s := New(kinds...)
	s.ts = httptest.NewServer(s)
	t.Cleanup(func() {
		close(s.closing)
		s.ts.Close()
	})
	return s
}

// URL returns the base URL (http://127.0.0.1:PORT, no trailing slash) of a
// Server made by Start, or "" for one made by New.
func (s *Server) URL() string {
	if s.ts == nil {
		return ""
	}
	return s.ts.URL
}

// SetKinds replaces the accepted event kinds (duplicates dropped, order
// kept); with no argument DefaultKinds are restored. It affects POST
// validation, the kind filter of GET /events and /openapi.json at once.
func (s *Server) SetKinds(kinds ...string) {
	if len(kinds) == 0 {
		kinds = DefaultKinds
	}
	list := make([]string, 0, len(kinds))
	ok := make(map[string]bool, len(kinds))
	for _, k := range kinds {
		if !ok[k] {
			ok[k] = true
			list = append(list, k)
		}
	}
	s.mu.Lock()
	s.kinds, s.kindOK = list, ok
	s.mu.Unlock()
}

// Kinds returns the accepted event kinds, in the order /openapi.json lists
// them.
func (s *Server) Kinds() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.kinds...)
}

// Events returns a deep copy of the chain, in event_id order.
func (s *Server) Events() []Event {
	s.mu.Lock()
	evs := s.events
	s.mu.Unlock()
	out := make([]Event, len(evs))
	for i, e := range evs {
		e.Payload, _ = deepCopy(e.Payload).(map[string]any)
		out[i] = e
	}
	return out
}

// Reset empties the chain, as a restart of the real in-memory service does:
// the next event is event_id 1 with the genesis prev_hash. Kinds, faults,
// fault counters and Requests are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	s.events = nil
	s.mu.Unlock()
}

// Requests returns the number of POST /events received, faulted ones
// included (but not those refused by SetDown).
func (s *Server) Requests() int64 {
	return s.requests.Load()
}

// Verify re-walks the chain as GET /verify does. When it is intact it
// returns (true, 0, ""); otherwise the event_id of the first broken event and
// why ("event_id out of sequence", "prev_hash mismatch" or "hash mismatch").
func (s *Server) Verify() (valid bool, firstBreak int64, reason string) {
	valid, _, firstBreak, reason = s.verify()
	return valid, firstBreak, reason
}

// verify also returns how many events were found intact before the break.
func (s *Server) verify() (valid bool, checked int, firstBreak int64, reason string) {
	s.mu.Lock()
	evs := s.events
	s.mu.Unlock()
	prev := GenesisHash
	for i, e := range evs {
		switch {
		case e.EventID != int64(i+1):
			return false, i, e.EventID, "event_id out of sequence"
		case e.PrevHash != prev:
			return false, i, e.EventID, "prev_hash mismatch"
		case Hash(e) != e.Hash:
			return false, i, e.EventID, "hash mismatch"
		}
		prev = e.Hash
	}
	return true, len(evs), 0, ""
}

// append adds an event to the chain, computing event_id, prev_hash and hash.
func (s *Server) append(ts, kind, source string, payload map[string]any) Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := Event{
		EventID:   int64(len(s.events) + 1),
		Timestamp: ts,
		Kind:      kind,
		Source:    source,
		Payload:   payload,
		PrevHash:  GenesisHash,
	}
	if n := len(s.events); n > 0 {
		e.PrevHash = s.events[n-1].Hash
	}
	e.Hash = Hash(e)
	s.events = append(s.events, e)
	return e
}

// ServeHTTP serves the spine's endpoints: POST /events, GET /events,
// GET /events/{event_id}, GET /stats, GET /verify, GET /healthz and
// GET /openapi.json (GET /stream is not provided). Unknown paths answer 404
// and wrong methods 405, with FastAPI's {"detail": ...} bodies; a path with
// a trailing slash is redirected (307) like Starlette's redirect_slashes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.down.Load() {
		drop(w)
		return
	}
	path := r.URL.Path
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case path == "/events":
		switch {
		case r.Method == http.MethodPost:
			s.handlePost(w, r)
		case get:
			if f, cfg := s.nextReadFault(); refuse(w, r, f, cfg) {
				return
			}
			s.handleList(w, r)
		default:
			methodNotAllowed(w, "GET, POST")
		}
		return
	case isEventPath(path):
		if !get {
			methodNotAllowed(w, "GET")
			return
		}
		s.handleGet(w, strings.TrimPrefix(path, "/events/"))
		return
	case path == "/stats" || path == "/verify" || path == "/healthz" || path == "/openapi.json":
		if !get {
			methodNotAllowed(w, "GET")
			return
		}
		switch path {
		case "/stats":
			s.handleStats(w)
		case "/verify":
			s.handleVerify(w)
		case "/healthz":
			writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
		default:
			doc, err := s.openAPI()
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, map[string]any{"detail": "BUG: " + err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, doc)
		}
		return
	}
	if trimmed := strings.TrimSuffix(path, "/"); len(path) > 1 && trimmed != path && isRoute(trimmed) {
		u := "http://" + r.Host + trimmed
		if r.URL.RawQuery != "" {
			u += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", u)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
}

func isEventPath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/events/")
	return ok && rest != "" && !strings.Contains(rest, "/")
}

func isRoute(p string) bool {
	switch p {
	case "/events", "/stats", "/verify", "/healthz", "/openapi.json":
		return true
	}
	return isEventPath(p)
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"detail": "Method Not Allowed"})
}

// writeJSON answers with v encoded as the spine's responses are.
func writeJSON(w http.ResponseWriter, status int, v any) {
	writeRaw(w, status, encodeAnswer(v))
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// validationError is one entry of FastAPI's 422 "detail" list.
func validationError(typ string, loc []any, msg string, input any, ctx map[string]any) map[string]any {
	e := map[string]any{"type": typ, "loc": loc, "msg": msg, "input": input}
	if ctx != nil {
		e["ctx"] = ctx
	}
	return e
}

func write422(w http.ResponseWriter, errs ...map[string]any) {
	detail := make([]any, len(errs))
	for i, e := range errs {
		detail[i] = e
	}
	status, body := fail422(detail...)
	writeRaw(w, status, body)
}

// handlePost is POST /events, with fault injection.
func (s *Server) handlePost(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	fault, cfg := s.nextFault()
	if refuse(w, r, fault, cfg) {
		return
	}
	switch fault {
	case FaultReject:
		io.Copy(io.Discard, r.Body)
		write422(w, validationError("value_error", []any{"body", "payload"},
			"Value error, payload refused (spinetest injected fault)", nil, nil))
		return
	case Fault201HTML:
		io.Copy(io.Discard, r.Body)
		writeHTML201(w)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		drop(w) // the client went away mid-body
		return
	}
	switch fault {
	case FaultStall:
		s.pause(r, cfg.stall)
	case FaultSlow:
		t := time.NewTimer(cfg.stall)
		select {
		case <-t.C:
		case <-s.closing:
			t.Stop()
		}
	}
	status, resp := s.post(r.Header.Get("Content-Type"), body)
	switch fault {
	case FaultDropAfter:
		drop(w)
	case Fault201HTMLAfter:
		writeHTML201(w)
	case FaultStallBody:
		s.writeStalled(w, r, status, resp, cfg)
	default:
		writeRaw(w, status, resp)
	}
}

// post validates and appends one event, returning the answer.
func (s *Server) post(contentType string, body []byte) (int, []byte) {
	obj, body, status, refusal := parseBody(contentType, body)
	if obj == nil {
		return status, refusal
	}
	kind, source, ts, payload, errs := s.validate(obj, body)
	if len(errs) > 0 {
		return fail422(errs...)
	}
	e := s.append(ts, kind, source, payload)
	var buf bytes.Buffer
	if err := writeEvent(&buf, e); err != nil {
		panic(err)
	}
	return http.StatusCreated, buf.Bytes()
}

// answer encodes v as the answer with status.
func answer(status int, v any) (int, []byte) {
	return status, encodeAnswer(v)
}

// encodeAnswer encodes v as the spine's responses are.
func encodeAnswer(v any) []byte {
	var buf bytes.Buffer
	if err := writeValue(&buf, v, false); err != nil {
		panic(err) // only values built by this package are written
	}
	return buf.Bytes()
}

// fail422 is FastAPI's answer to a body that fails validation.
func fail422(errs ...any) (int, []byte) {
	return answer(http.StatusUnprocessableEntity, map[string]any{"detail": errs})
}

// parseBody reads a request body as FastAPI does: the JSON object it
// holds (and the body without a BOM), or nil with the refusal.
func parseBody(contentType string, body []byte) (map[string]any, []byte, int, []byte) {
	refuse := func(status int, refusal []byte) (map[string]any, []byte, int, []byte) {
		return nil, nil, status, refusal
	}
	parseFail := func() (map[string]any, []byte, int, []byte) {
		return refuse(answer(http.StatusBadRequest, map[string]any{"detail": "There was an error parsing the body"}))
	}
	// FastAPI: an empty body is a missing body.
	if len(body) == 0 {
		return refuse(fail422(validationError("missing", []any{"body"}, "Field required", nil, nil)))
	}
	// FastAPI parses JSON when there is no Content-Type or when it is
	// application/json or application/*+json; otherwise the model receives
	// the raw bytes and refuses them.
	if !isJSONContentType(contentType) {
		return refuse(fail422(validationError("model_attributes_type", []any{"body"},
			"Input should be a valid dictionary or object to extract fields from", string(body), nil)))
	}
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf")) // json.loads(bytes) accepts a UTF-8 BOM
	if !utf8.Valid(body) {
		return parseFail() // UnicodeDecodeError: not a JSONDecodeError
	}
	v, jerr := decodeJSON(body)
	if jerr != nil {
		return refuse(fail422(validationError("json_invalid", []any{"body", jerr.pos}, "JSON decode error",
			map[string]any{}, map[string]any{"error": jerr.msg})))
	}
	if tooManyDigits(v) {
		return parseFail()
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return refuse(fail422(validationError("model_attributes_type", []any{"body"},
			"Input should be a valid dictionary or object to extract fields from", v, nil)))
	}
	return obj, body, 0, nil
}

// validate holds a request's object to the PublishRequest model, as
// pydantic does: every error, in the model's field order, then the extra
// members in the body's order.
func (s *Server) validate(obj map[string]any, body []byte) (kind, source, ts string, payload map[string]any, errs []any) {
	s.mu.Lock()
	kinds, kindOK := s.kinds, s.kindOK
	s.mu.Unlock()

	kind, _ = obj["kind"].(string)
	if k, present := obj["kind"]; !present {
		errs = append(errs, validationError("missing", []any{"body", "kind"}, "Field required", obj, nil))
	} else if ks, isStr := k.(string); !isStr || !kindOK[ks] {
		expected := enumExpected(kinds)
		errs = append(errs, validationError("enum", []any{"body", "kind"}, "Input should be "+expected, k,
			map[string]any{"expected": expected}))
	}
	source, _ = obj["source"].(string)
	if src, present := obj["source"]; !present {
		errs = append(errs, validationError("missing", []any{"body", "source"}, "Field required", obj, nil))
	} else if str, isStr := src.(string); !isStr {
		errs = append(errs, validationError("string_type", []any{"body", "source"}, "Input should be a valid string", src, nil))
	} else if str == "" {
		errs = append(errs, validationError("string_too_short", []any{"body", "source"},
			"String should have at least 1 character", str, map[string]any{"min_length": 1}))
	}
	payload = map[string]any{}
	if p, present := obj["payload"]; present {
		if pm, isObj := p.(map[string]any); isObj {
			payload = pm
		} else {
			errs = append(errs, validationError("dict_type", []any{"body", "payload"}, "Input should be a valid dictionary", p, nil))
		}
	}
	ts, errs = s.validateTimestamp(obj["timestamp"], errs)
	var extras []string
	for k := range obj {
		switch k {
		case "kind", "source", "payload", "timestamp":
		default:
			extras = append(extras, k)
		}
	}
	if len(extras) > 0 {
		for _, k := range topLevelKeyOrder(body, extras) {
			errs = append(errs, validationError("extra_forbidden", []any{"body", k}, "Extra inputs are not permitted", obj[k], nil))
		}
	}
	return kind, source, ts, payload, errs
}

// validateTimestamp normalises a request's timestamp (now when it has
// none), appending its validation error to errs.
func (s *Server) validateTimestamp(v any, errs []any) (string, []any) {
	switch t := v.(type) {
	case nil:
		return s.now().UTC().Format(nowLayout), errs
	case string:
		norm, terr := normalizeTimestamp(t)
		if terr != nil {
			msg := "Input should be a valid datetime or date, " + terr.reason
			if terr.typ == "datetime_parsing" {
				msg = "Input should be a valid datetime, " + terr.reason
			}
			errs = append(errs, validationError(terr.typ, []any{"body", "timestamp"}, msg, t,
				map[string]any{"error": terr.reason}))
		}
		return norm, errs
	default:
		return "", append(errs, validationError("datetime_type", []any{"body", "timestamp"}, "Input should be a valid datetime", t, nil))
	}
}

func isJSONContentType(ct string) bool {
	if ct == "" {
		return true
	}
	mt := strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	sub, ok := strings.CutPrefix(mt, "application/")
	return ok && (sub == "json" || strings.HasSuffix(sub, "+json"))
}

// enumExpected is pydantic's rendering of the allowed values:
// 'a', 'b' or 'c'.
func enumExpected(kinds []string) string {
	q := make([]string, len(kinds))
	for i, k := range kinds {
		q[i] = "'" + k + "'"
	}
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// jsonError approximates Python's JSONDecodeError (position and message).
type jsonError struct {
	pos int
	msg string
}

// decodeJSON decodes exactly one JSON value (numbers as json.Number) and
// refuses trailing data, as json.loads does.
func decodeJSON(b []byte) (any, *jsonError) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		pos := len(b)
		var se *json.SyntaxError
		if errors.As(err, &se) && se.Offset > 0 {
			pos = int(se.Offset) - 1
		}
		return nil, &jsonError{pos: pos, msg: "Expecting value"}
	}
	off := int(dec.InputOffset())
	if _, err := dec.Token(); err != io.EOF {
		for off < len(b) && strings.IndexByte(" \t\r\n", b[off]) >= 0 {
			off++
		}
		return nil, &jsonError{pos: off, msg: "Extra data"}
	}
	return v, nil
}

// tooManyDigits reports whether v holds an integer literal longer than
// CPython's int_max_str_digits.
func tooManyDigits(v any) bool {
	switch x := v.(type) {
	case json.Number:
		s := strings.TrimPrefix(string(x), "-")
		return len(s) > maxIntDigits && isIntLiteral(s)
	case map[string]any:
		for _, e := range x {
			if tooManyDigits(e) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if tooManyDigits(e) {
				return true
			}
		}
	}
	return false
}

// topLevelKeyOrder returns keys in the order they first appear in the
// top-level object of b (pydantic reports extra fields in input order).
func topLevelKeyOrder(b []byte, keys []string) []string {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	out := make([]string, 0, len(keys))
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return keys
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys
		}
		k, _ := t.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return keys
		}
		if want[k] {
			want[k] = false
			out = append(out, k)
		}
	}
	return out
}

// parseLaxInt parses an integer the way pydantic does from a query or path
// string: surrounding whitespace, a sign, single underscores between digits
// and a fraction of zeros ("5.0") are allowed.
func parseLaxInt(s string) (*big.Int, bool) {
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if i := strings.IndexByte(s, '.'); i >= 0 {
		if strings.Trim(s[i+1:], "0") != "" {
			return nil, false
		}
		s = s[:i]
	}
	if s == "" || s[0] == '_' || s[len(s)-1] == '_' || strings.Contains(s, "__") {
		return nil, false
	}
	s = strings.ReplaceAll(s, "_", "")
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return nil, false
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if ok && neg {
		n.Neg(n)
	}
	return n, ok
}

func intParsing(loc []any, input string) map[string]any {
	return validationError("int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", input, nil)
}

// handleList is GET /events?kind=&source=&limit=.
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	last := func(k string) (string, bool) {
		vs, ok := q[k]
		if !ok || len(vs) == 0 {
			return "", false
		}
		return vs[len(vs)-1], true
	}
	s.mu.Lock()
	kinds, kindOK := s.kinds, s.kindOK
	s.mu.Unlock()

	var errs []map[string]any
	kind, hasKind := last("kind")
	if hasKind && !kindOK[kind] {
		expected := enumExpected(kinds)
		errs = append(errs, validationError("enum", []any{"query", "kind"}, "Input should be "+expected, kind,
			map[string]any{"expected": expected}))
	}
	limit := int64(DefaultLimit)
	outOfRange := false
	if ls, ok := last("limit"); ok {
		n, ok := parseLaxInt(ls)
		switch {
		case !ok:
			errs = append(errs, intParsing([]any{"query", "limit"}, ls))
		case !n.IsInt64() || n.Int64() < 1 || n.Int64() > MaxLimit:
			outOfRange = true
		default:
			limit = n.Int64()
		}
	}
	if len(errs) > 0 {
		write422(w, errs...)
		return
	}
	if outOfRange {
		writeJSON(w, http.StatusBadRequest, map[string]any{"detail": "limit must be between 1 and 100000"})
		return
	}
	source, _ := last("source")

	s.mu.Lock()
	evs := s.events
	s.mu.Unlock()
	var picked []Event
	for i := len(evs) - 1; i >= 0 && int64(len(picked)) < limit; i-- {
		e := evs[i]
		switch {
		case hasKind:
			if e.Kind != kind {
				continue
			}
		case source != "":
			if e.Source != source {
				continue
			}
		}
		picked = append(picked, e)
	}
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i := len(picked) - 1; i >= 0; i-- {
		if i < len(picked)-1 {
			buf.WriteByte(',')
		}
		if err := writeEvent(&buf, picked[i]); err != nil {
			panic(err)
		}
	}
	buf.WriteByte(']')
	writeRaw(w, http.StatusOK, buf.Bytes())
}

// handleGet is GET /events/{event_id}.
func (s *Server) handleGet(w http.ResponseWriter, raw string) {
	n, ok := parseLaxInt(raw)
	if !ok {
		write422(w, intParsing([]any{"path", "event_id"}, raw))
		return
	}
	s.mu.Lock()
	evs := s.events
	s.mu.Unlock()
	if !n.IsInt64() || n.Int64() < 1 || n.Int64() > int64(len(evs)) {
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Event not found"})
		return
	}
	var buf bytes.Buffer
	if err := writeEvent(&buf, evs[n.Int64()-1]); err != nil {
		panic(err)
	}
	writeRaw(w, http.StatusOK, buf.Bytes())
}

// handleStats is GET /stats.
func (s *Server) handleStats(w http.ResponseWriter) {
	s.mu.Lock()
	evs := s.events
	s.mu.Unlock()
	var lastID any
	latest := GenesisHash
	if n := len(evs); n > 0 {
		lastID = evs[n-1].EventID
		latest = evs[n-1].Hash
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(evs), "last_event_id": lastID, "latest_hash": latest})
}

// handleVerify is GET /verify.
func (s *Server) handleVerify(w http.ResponseWriter) {
	valid, checked, first, reason := s.verify()
	var firstAt, why any
	if !valid {
		firstAt, why = first, reason
	}
	writeJSON(w, http.StatusOK, map[string]any{"valid": valid, "checked": checked, "first_break_at": firstAt, "reason": why})
}

// deepCopy copies the maps and slices of a decoded JSON value.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if x == nil {
			return x
		}
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		if x == nil {
			return x
		}
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopy(e)
		}
		return l
	}
	return v
}
