package spinetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// client has no automatic retries for POST (no Idempotency-Key) and a
// timeout so that a broken double fails the test instead of hanging it.
var client = &http.Client{Timeout: 10 * time.Second}

// noRedirects is client without following redirects, to see a 302 itself.
var noRedirects = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, c *http.Client, method, url, contentType, body string) (reply, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{resp.StatusCode, resp.Header, b}, nil
}

func mustDo(t *testing.T, method, url, contentType, body string) reply {
	t.Helper()
	r, err := do(t, client, method, url, contentType, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func post(t *testing.T, s *Server, body string) reply {
	t.Helper()
	return mustDo(t, http.MethodPost, s.URL()+"/events", "application/json", body)
}

func get(t *testing.T, s *Server, path string) reply {
	t.Helper()
	return mustDo(t, http.MethodGet, s.URL()+path, "", "")
}

func decodeAny(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func decodeEvent(t *testing.T, b []byte) Event {
	t.Helper()
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("decode event %s: %v", b, err)
	}
	return e
}

func decodeEvents(t *testing.T, b []byte) []Event {
	t.Helper()
	var es []Event
	if err := json.Unmarshal(b, &es); err != nil {
		t.Fatalf("decode events %s: %v", b, err)
	}
	return es
}

func wantStatus(t *testing.T, r reply, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status: got %d, want %d (body %s)", r.status, want, r.body)
	}
}

func eventBody(kind, source, payload string) string {
	return fmt.Sprintf(`{"kind":%q,"source":%q,"payload":%s}`, kind, source, payload)
}

func TestVectorsThroughServer(t *testing.T) {
	s := Start(t)
	vs := loadVectors(t)
	for _, v := range vs {
		body := decodeAny(t, v.Body).(map[string]any)
		wantID := body["event_id"].(json.Number).String()
		delete(body, "event_id")
		delete(body, "prev_hash")
		req, err := Canonical(body)
		if err != nil {
			t.Fatal(err)
		}
		t.Run("event_"+wantID, func(t *testing.T) {
			r := post(t, s, string(req))
			wantStatus(t, r, http.StatusCreated)
			var want Event
			if err := json.Unmarshal(v.Body, &want); err != nil {
				t.Fatal(err)
			}
			want.Hash = v.Hash
			got := decodeEvent(t, r.body)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("stored event: got %+v, want %+v", got, want)
			}
		})
	}
	evs := s.Events()
	if len(evs) != len(vs) {
		t.Fatalf("chain length: got %d, want %d", len(evs), len(vs))
	}
	for i, e := range evs {
		if e.Hash != vs[i].Hash {
			t.Errorf("event %d hash: got %s, want %s", e.EventID, e.Hash, vs[i].Hash)
		}
	}
	stats := decodeAny(t, get(t, s, "/stats").body).(map[string]any)
	if got, want := stats["latest_hash"], vs[4].Hash; got != want {
		t.Errorf("latest_hash: got %v, want %v", got, want)
	}
	verify := decodeAny(t, get(t, s, "/verify").body).(map[string]any)
	wantVerify := map[string]any{"valid": true, "checked": json.Number("5"), "first_break_at": nil, "reason": nil}
	if !reflect.DeepEqual(verify, wantVerify) {
		t.Errorf("verify: got %v, want %v", verify, wantVerify)
	}
}

func TestPostValidation(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		wantType    string // type of the first detail entry
		wantLoc     string // its loc, JSON-encoded
		wantErrors  int    // number of detail entries (0: not checked)
	}{
		{"unknown kind", "application/json", eventBody("nope", "s", "{}"), 422, "enum", `["body","kind"]`, 1},
		{"kind not a string", "application/json", `{"kind":5,"source":"s"}`, 422, "enum", `["body","kind"]`, 1},
		{"missing kind", "application/json", `{"source":"s"}`, 422, "missing", `["body","kind"]`, 1},
		{"extra field", "application/json", `{"kind":"other","source":"s","event_id":7}`, 422, "extra_forbidden", `["body","event_id"]`, 1},
		{"empty source", "application/json", eventBody("other", "", "{}"), 422, "string_too_short", `["body","source"]`, 1},
		{"source not a string", "application/json", `{"kind":"other","source":1}`, 422, "string_type", `["body","source"]`, 1},
		{"missing source", "application/json", `{"kind":"other"}`, 422, "missing", `["body","source"]`, 1},
		{"payload array", "application/json", eventBody("other", "s", "[1]"), 422, "dict_type", `["body","payload"]`, 1},
		{"payload string", "application/json", eventBody("other", "s", `"x"`), 422, "dict_type", `["body","payload"]`, 1},
		{"payload null", "application/json", eventBody("other", "s", "null"), 422, "dict_type", `["body","payload"]`, 1},
		{"bad timestamp", "application/json", `{"kind":"other","source":"s","timestamp":"yesterday"}`, 422, "datetime_from_date_parsing", `["body","timestamp"]`, 1},
		{"timestamp bool", "application/json", `{"kind":"other","source":"s","timestamp":true}`, 422, "datetime_type", `["body","timestamp"]`, 1},
		{"invalid JSON", "application/json", `{"kind":`, 422, "json_invalid", "", 1},
		{"trailing data", "application/json", `{"kind":"other","source":"s"} {}`, 422, "json_invalid", "", 1},
		{"body array", "application/json", `[{"kind":"other","source":"s"}]`, 422, "model_attributes_type", `["body"]`, 1},
		{"body string", "application/json", `"other"`, 422, "model_attributes_type", `["body"]`, 1},
		{"body null", "application/json", `null`, 422, "model_attributes_type", `["body"]`, 1},
		{"empty body", "application/json", ``, 422, "missing", `["body"]`, 1},
		{"text/plain", "text/plain", eventBody("other", "s", "{}"), 422, "model_attributes_type", `["body"]`, 1},
		{"all wrong at once", "application/json", `{"z":1,"kind":"nope","a":2}`, 422, "enum", `["body","kind"]`, 4},
		{"invalid UTF-8", "application/json", "{\"kind\":\"other\",\"source\":\"\xff\"}", 400, "", "", 0},
		{"int over 4300 digits", "application/json", eventBody("other", "s", `{"n":`+strings.Repeat("9", 4301)+`}`), 400, "", "", 0},
	}
	s := Start(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustDo(t, http.MethodPost, s.URL()+"/events", tt.contentType, tt.body)
			wantStatus(t, r, tt.status)
			if got := r.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("content type: got %q, want application/json", got)
			}
			resp := decodeAny(t, r.body).(map[string]any)
			if tt.status == 400 {
				if got, want := resp["detail"], "There was an error parsing the body"; got != want {
					t.Errorf("detail: got %v, want %v", got, want)
				}
				return
			}
			detail, ok := resp["detail"].([]any)
			if !ok || len(detail) == 0 {
				t.Fatalf("detail: got %s, want a non-empty list", r.body)
			}
			if tt.wantErrors > 0 && len(detail) != tt.wantErrors {
				t.Errorf("detail entries: got %d, want %d (%s)", len(detail), tt.wantErrors, r.body)
			}
			first := detail[0].(map[string]any)
			if got := first["type"]; got != tt.wantType {
				t.Errorf("type: got %v, want %v", got, tt.wantType)
			}
			for _, k := range []string{"type", "loc", "msg", "input"} {
				if _, ok := first[k]; !ok {
					t.Errorf("detail[0] lacks %q: got %s", k, r.body)
				}
			}
			if tt.wantLoc != "" {
				loc, _ := json.Marshal(first["loc"])
				if string(loc) != tt.wantLoc {
					t.Errorf("loc: got %s, want %s", loc, tt.wantLoc)
				}
			}
		})
	}
	if n := len(s.Events()); n != 0 {
		t.Errorf("events appended by refused posts: got %d, want 0", n)
	}
	if got, want := s.Requests(), int64(len(tests)); got != want {
		t.Errorf("Requests: got %d, want %d", got, want)
	}
}

func TestValidationErrorDetails(t *testing.T) {
	s := Start(t, "a", "b", "c")
	tests := []struct {
		name string
		body string
		want string
	}{
		{"enum", `{"kind":"z","source":"s"}`,
			`{"detail":[{"ctx":{"expected":"'a', 'b' or 'c'"},"input":"z","loc":["body","kind"],"msg":"Input should be 'a', 'b' or 'c'","type":"enum"}]}`},
		{"missing and extras in input order", `{"y":2,"kind":"a","x":1}`,
			`{"detail":[{"input":{"kind":"a","x":1,"y":2},"loc":["body","source"],"msg":"Field required","type":"missing"},{"input":2,"loc":["body","y"],"msg":"Extra inputs are not permitted","type":"extra_forbidden"},{"input":1,"loc":["body","x"],"msg":"Extra inputs are not permitted","type":"extra_forbidden"}]}`},
		{"string too short", `{"kind":"a","source":""}`,
			`{"detail":[{"ctx":{"min_length":1},"input":"","loc":["body","source"],"msg":"String should have at least 1 character","type":"string_too_short"}]}`},
		{"timestamp", `{"kind":"a","source":"s","timestamp":"2026-02-30T10:00:00Z"}`,
			`{"detail":[{"ctx":{"error":"day value is outside expected range"},"input":"2026-02-30T10:00:00Z","loc":["body","timestamp"],"msg":"Input should be a valid datetime or date, day value is outside expected range","type":"datetime_from_date_parsing"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(t, s, tt.body)
			wantStatus(t, r, http.StatusUnprocessableEntity)
			got, err := Canonical(decodeAny(t, r.body))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestPost201Shape(t *testing.T) {
	s := Start(t)
	fixed := time.Date(2026, 5, 15, 3, 14, 15, 999_000_000, time.FixedZone("X", 3600))
	s.now = func() time.Time { return fixed }
	r := post(t, s, `{"kind":"other","source":"cdc","payload":{"amount":12.50,"big":1E2,"n":-0,"s":"été"}}`)
	wantStatus(t, r, http.StatusCreated)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if got, want := strings.Join(keys, ","), "event_id,hash,kind,payload,prev_hash,source,timestamp"; got != want {
		t.Errorf("keys: got %s, want %s", got, want)
	}
	checks := []struct{ field, want string }{
		{"event_id", `1`},
		{"timestamp", `"2026-05-15T02:14:15+00:00"`},
		{"kind", `"other"`},
		{"source", `"cdc"`},
		{"payload", `{"amount":12.5,"big":100.0,"n":0,"s":"été"}`},
		{"prev_hash", `"` + GenesisHash + `"`},
	}
	for _, c := range checks {
		if got := string(raw[c.field]); got != c.want {
			t.Errorf("%s: got %s, want %s", c.field, got, c.want)
		}
	}
	e := decodeEvent(t, r.body)
	if got, want := e.Hash, Hash(e); got != want {
		t.Errorf("hash: got %s, want %s", got, want)
	}
	if got := get(t, s, "/events/1").body; !bytes.Equal(got, r.body) {
		t.Errorf("GET /events/1: got %s, want %s", got, r.body)
	}
	r2 := post(t, s, `{"kind":"other","source":"cdc"}`)
	wantStatus(t, r2, http.StatusCreated)
	e2 := decodeEvent(t, r2.body)
	if e2.EventID != 2 || e2.PrevHash != e.Hash || len(e2.Payload) != 0 || e2.Payload == nil {
		t.Errorf("second event: got id %d prev %s payload %v, want id 2 prev %s payload {}", e2.EventID, e2.PrevHash, e2.Payload, e.Hash)
	}
}

func TestPostDuplicateBodiesAppendTwice(t *testing.T) {
	s := Start(t)
	body := eventBody("other", "s", `{"x":1}`)
	post(t, s, body)
	post(t, s, body)
	if got := len(s.Events()); got != 2 {
		t.Errorf("events: got %d, want 2", got)
	}
}

func TestTimestamps(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means 422
	}{
		{"2026-11-22T10:00:00+00:00", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22T10:00:00Z", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22t10:00:00z", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22 10:00:00-00:00", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22_10:00:00+0100", "2026-11-22T10:00:00+01:00"},
		{"2026-11-22T10:00:00.5+01:00", "2026-11-22T10:00:00.500000+01:00"},
		{"2026-11-22T10:00:00,5Z", "2026-11-22T10:00:00.500000+00:00"},
		{"2026-11-22T10:00:00.000000+00:00", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22T23:59:59.999999999Z", "2026-11-22T23:59:59.999999+00:00"},
		{"2026-11-22T10:00:00-05:30", "2026-11-22T10:00:00-05:30"},
		{"2026-11-22T10:00Z", "2026-11-22T10:00:00+00:00"},
		{"2026-11-22T10:00:00.123", "2026-11-22T10:00:00.123000"},
		{"2026-11-22", "2026-11-22T00:00:00"},
		{"2024-02-29T00:00:00", "2024-02-29T00:00:00"},
		{"", ""},
		{"garbage", ""},
		{"2023-02-29T00:00:00", ""},
		{"0000-01-01T00:00:00", ""},
		{"2026-11-22Z", ""},
		{"2026-11-22T24:00:00Z", ""},
		{"2026-11-22T10:00:60Z", ""},
		{"2026-11-22T10:00:00+01", ""},
		{"2026-11-22T10:00:00+24:00", ""},
		{"2026-11-22T10:00:00.Z", ""},
		{"2026-11-22T10:00:00Z ", ""},
		{"20261122T100000Z", ""},
		{"1700000000", ""}, // accepted by pydantic, refused by the double
	}
	s := Start(t)
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			body := fmt.Sprintf(`{"kind":"other","source":"s","timestamp":%q}`, tt.in)
			r := post(t, s, body)
			if tt.want == "" {
				wantStatus(t, r, http.StatusUnprocessableEntity)
				return
			}
			wantStatus(t, r, http.StatusCreated)
			if got := decodeEvent(t, r.body).Timestamp; got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	t.Run("null stamps now", func(t *testing.T) {
		before := time.Now().UTC().Truncate(time.Second)
		r := post(t, s, `{"kind":"other","source":"s","timestamp":null}`)
		wantStatus(t, r, http.StatusCreated)
		ts := decodeEvent(t, r.body).Timestamp
		got, err := time.Parse(nowLayout, ts)
		if err != nil {
			t.Fatalf("got %s, want layout %s: %v", ts, nowLayout, err)
		}
		if after := time.Now().UTC(); got.Before(before) || got.After(after) {
			t.Errorf("got %s, want between %s and %s", got, before, after)
		}
	})
}

// seed appends n events directly, kinds and sources cycling through the
// given lists.
func seed(s *Server, n int, kinds, sources []string) {
	for i := 0; i < n; i++ {
		s.append("2026-11-22T10:00:00+00:00", kinds[i%len(kinds)], sources[i%len(sources)], map[string]any{"i": json.Number(fmt.Sprint(i + 1))})
	}
}

func ids(es []Event) []int64 {
	out := make([]int64, len(es))
	for i, e := range es {
		out[i] = e.EventID
	}
	return out
}

func TestListEvents(t *testing.T) {
	s := Start(t)
	seed(s, 1205, []string{"other", "watch_created", "incident_filed"}, []string{"a", "b"})
	tests := []struct {
		name    string
		query   string
		status  int
		wantLen int
		wantIDs []int64 // when set, the exact list
	}{
		{"default limit 1000", "", 200, 1000, nil},
		{"limit 1", "?limit=1", 200, 1, []int64{1205}},
		{"limit max", "?limit=100000", 200, 1205, nil},
		{"limit 0", "?limit=0", 400, 0, nil},
		{"limit negative", "?limit=-1", 400, 0, nil},
		{"limit too big", "?limit=100001", 400, 0, nil},
		{"limit huge", "?limit=99999999999999999999999", 400, 0, nil},
		{"limit not an integer", "?limit=abc", 422, 0, nil},
		{"limit empty", "?limit=", 422, 0, nil},
		{"limit lax 5.0", "?limit=5.0", 200, 5, nil},
		{"last N ascending", "?limit=3", 200, 3, []int64{1203, 1204, 1205}},
		{"kind", "?kind=incident_filed&limit=2", 200, 2, []int64{1200, 1203}},
		{"source", "?source=a&limit=3", 200, 3, []int64{1201, 1203, 1205}},
		{"kind wins over source", "?kind=other&source=a&limit=4", 200, 4, []int64{1195, 1198, 1201, 1204}},
		{"unknown kind", "?kind=nope", 422, 0, nil},
		{"empty kind", "?kind=", 422, 0, nil},
		{"unknown source", "?source=zzz", 200, 0, []int64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := get(t, s, "/events"+tt.query)
			wantStatus(t, r, tt.status)
			if tt.status != 200 {
				return
			}
			es := decodeEvents(t, r.body)
			if len(es) != tt.wantLen {
				t.Fatalf("length: got %d, want %d", len(es), tt.wantLen)
			}
			for i := 1; i < len(es); i++ {
				if es[i].EventID <= es[i-1].EventID {
					t.Fatalf("order: got %d after %d, want ascending", es[i].EventID, es[i-1].EventID)
				}
			}
			if tt.wantIDs != nil && !reflect.DeepEqual(ids(es), tt.wantIDs) {
				t.Errorf("ids: got %v, want %v", ids(es), tt.wantIDs)
			}
		})
	}
}

func TestReadEndpoints(t *testing.T) {
	s := Start(t)
	t.Run("stats empty", func(t *testing.T) {
		got := string(get(t, s, "/stats").body)
		want := `{"count":0,"last_event_id":null,"latest_hash":"` + GenesisHash + `"}`
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})
	t.Run("verify empty", func(t *testing.T) {
		got := string(get(t, s, "/verify").body)
		want := `{"checked":0,"first_break_at":null,"reason":null,"valid":true}`
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})
	seed(s, 3, []string{"other"}, []string{"a"})
	last := s.Events()[2]
	tests := []struct {
		name   string
		path   string
		status int
		want   string // exact body when set
	}{
		{"stats", "/stats", 200, `{"count":3,"last_event_id":3,"latest_hash":"` + last.Hash + `"}`},
		{"verify", "/verify", 200, `{"checked":3,"first_break_at":null,"reason":null,"valid":true}`},
		{"healthz", "/healthz", 200, `{"status":"ok"}`},
		{"event 2", "/events/2", 200, ""},
		{"event missing", "/events/4", 404, `{"detail":"Event not found"}`},
		{"event 0", "/events/0", 404, ""},
		{"event not an integer", "/events/abc", 422, ""},
		{"unknown path", "/nope", 404, `{"detail":"Not Found"}`},
		{"stream not provided", "/stream", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := get(t, s, tt.path)
			wantStatus(t, r, tt.status)
			if tt.want != "" && string(r.body) != tt.want {
				t.Errorf("got %s, want %s", r.body, tt.want)
			}
		})
	}
	t.Run("event by id", func(t *testing.T) {
		if got := decodeEvent(t, get(t, s, "/events/2").body); !reflect.DeepEqual(got, s.Events()[1]) {
			t.Errorf("got %+v, want %+v", got, s.Events()[1])
		}
	})
	t.Run("method not allowed", func(t *testing.T) {
		r := mustDo(t, http.MethodDelete, s.URL()+"/events/1", "", "")
		wantStatus(t, r, http.StatusMethodNotAllowed)
		if got := r.header.Get("Allow"); got != "GET" {
			t.Errorf("Allow: got %q, want GET", got)
		}
	})
	t.Run("trailing slash redirects", func(t *testing.T) {
		noFollow := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r, err := do(t, noFollow, http.MethodGet, s.URL()+"/stats/", "", "")
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, r, http.StatusTemporaryRedirect)
		if got, want := r.header.Get("Location"), s.URL()+"/stats"; got != want {
			t.Errorf("Location: got %s, want %s", got, want)
		}
	})
}

func TestVerifyDetectsTampering(t *testing.T) {
	tests := []struct {
		name       string
		tamper     func(evs []Event)
		wantBreak  int64
		wantReason string
		wantCheck  int
	}{
		{"payload changed", func(evs []Event) { evs[2].Payload = map[string]any{"i": json.Number("99")} }, 3, "hash mismatch", 2},
		{"prev_hash changed", func(evs []Event) { evs[1].PrevHash = strings.Repeat("1", 64) }, 2, "prev_hash mismatch", 1},
		{"hash changed", func(evs []Event) { evs[0].Hash = strings.Repeat("f", 64) }, 1, "hash mismatch", 0},
		{"id changed", func(evs []Event) { evs[3].EventID = 9 }, 9, "event_id out of sequence", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Start(t)
			seed(s, 5, []string{"other"}, []string{"a"})
			s.mu.Lock()
			tt.tamper(s.events)
			s.mu.Unlock()
			valid, at, reason := s.Verify()
			if valid || at != tt.wantBreak || reason != tt.wantReason {
				t.Errorf("Verify: got (%v, %d, %q), want (false, %d, %q)", valid, at, reason, tt.wantBreak, tt.wantReason)
			}
			got := string(get(t, s, "/verify").body)
			want := fmt.Sprintf(`{"checked":%d,"first_break_at":%d,"reason":%q,"valid":false}`, tt.wantCheck, tt.wantBreak, tt.wantReason)
			if got != want {
				t.Errorf("GET /verify: got %s, want %s", got, want)
			}
		})
	}
}

// openAPIDoc fetches /openapi.json, checks its paths and returns its
// component schemas, numbers as json.Number.
func openAPIDoc(t *testing.T, s *Server) map[string]any {
	t.Helper()
	r := get(t, s, "/openapi.json")
	wantStatus(t, r, http.StatusOK)
	doc, _ := decodeAny(t, r.body).(map[string]any)
	paths, _ := doc["paths"].(map[string]any)
	for _, p := range []string{"/events", "/events/{event_id}", "/stats", "/verify", "/healthz"} {
		if _, ok := paths[p]; !ok {
			t.Errorf("paths: %s missing", p)
		}
	}
	schemas, _ := dig(doc, "components", "schemas").(map[string]any)
	if schemas == nil {
		t.Fatalf("no components.schemas in %s", r.body)
	}
	return schemas
}

// kindEnum returns components.schemas.<schema>.properties.kind.enum.
func kindEnum(t *testing.T, schemas map[string]any, schema string) []string {
	t.Helper()
	raw, ok := dig(schemas, schema, "properties", "kind", "enum").([]any)
	if !ok {
		t.Fatalf("%s.properties.kind.enum: missing", schema)
	}
	out := make([]string, len(raw))
	for i, k := range raw {
		out[i], _ = k.(string)
	}
	return out
}

// TestOpenAPIServesTheSpineSchemas: the double's PublishRequest and
// GovernanceEvent are the real spine's, and like the real spine it has no
// EventKind schema.
func TestOpenAPIServesTheSpineSchemas(t *testing.T) {
	s := Start(t)
	schemas := openAPIDoc(t, s)
	want, _ := dig(decodeAny(t, componentsJSON), "components", "schemas").(map[string]any)
	for _, name := range []string{"PublishRequest", "GovernanceEvent"} {
		if !reflect.DeepEqual(schemas[name], want[name]) {
			t.Errorf("%s: got %v, want %v", name, schemas[name], want[name])
		}
	}
	if _, ok := schemas["EventKind"]; ok {
		t.Errorf("components.schemas.EventKind: got a schema, want none (the real spine inlines the kinds)")
	}
}

func TestComponentsCopyMatchesShared(t *testing.T) {
	compareWithShared(t, componentsFile)
}

func TestOpenAPIFollowsKinds(t *testing.T) {
	s := Start(t)
	enums := func() []string {
		t.Helper()
		schemas := openAPIDoc(t, s)
		got := kindEnum(t, schemas, "PublishRequest")
		if ev := kindEnum(t, schemas, "GovernanceEvent"); !reflect.DeepEqual(ev, got) {
			t.Errorf("GovernanceEvent kinds: got %v, want the PublishRequest kinds %v", ev, got)
		}
		return got
	}
	if got := enums(); !reflect.DeepEqual(got, DefaultKinds) {
		t.Errorf("default enum: got %v, want %v", got, DefaultKinds)
	}
	s.SetKinds("cdc_row_changed", "other", "cdc_row_changed")
	want := []string{"cdc_row_changed", "other"}
	if got := enums(); !reflect.DeepEqual(got, want) {
		t.Errorf("enum after SetKinds: got %v, want %v", got, want)
	}
	wantStatus(t, post(t, s, eventBody("cdc_row_changed", "s", "{}")), http.StatusCreated)
	wantStatus(t, post(t, s, eventBody("watch_created", "s", "{}")), http.StatusUnprocessableEntity)
	wantStatus(t, get(t, s, "/events?kind=cdc_row_changed"), http.StatusOK)
	wantStatus(t, get(t, s, "/events?kind=watch_created"), http.StatusUnprocessableEntity)
	s.SetKinds()
	if got := enums(); !reflect.DeepEqual(got, DefaultKinds) {
		t.Errorf("enum after SetKinds(): got %v, want %v", got, DefaultKinds)
	}
	// The served document is a copy: changing the kinds does not touch the
	// embedded schemas.
	base, err := spineSchemas()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(dig(base, "PublishRequest", "properties", "kind", "enum").([]any)); got != len(DefaultKinds) {
		t.Errorf("embedded enum: got %d kinds, want %d", got, len(DefaultKinds))
	}
}

func TestReset(t *testing.T) {
	s := Start(t)
	post(t, s, eventBody("other", "s", "{}"))
	post(t, s, eventBody("other", "s", "{}"))
	s.Reset()
	if n := len(s.Events()); n != 0 {
		t.Fatalf("events after Reset: got %d, want 0", n)
	}
	e := decodeEvent(t, post(t, s, eventBody("other", "s", "{}")).body)
	if e.EventID != 1 || e.PrevHash != GenesisHash {
		t.Errorf("first event after Reset: got id %d prev %s, want id 1 prev %s", e.EventID, e.PrevHash, GenesisHash)
	}
	if got := s.Requests(); got != 3 {
		t.Errorf("Requests: got %d, want 3", got)
	}
}

func TestEventsIsACopy(t *testing.T) {
	s := Start(t)
	post(t, s, eventBody("other", "s", `{"a":{"b":[1]}}`))
	evs := s.Events()
	evs[0].Payload["a"].(map[string]any)["b"].([]any)[0] = "changed"
	if ok, at, why := s.Verify(); !ok {
		t.Errorf("Verify after mutating a copy: got break at %d (%s), want valid", at, why)
	}
}

func TestEventJSONRoundTrip(t *testing.T) {
	e := Event{EventID: 3, Timestamp: "2026-11-22T10:00:00+00:00", Kind: "other", Source: "s",
		Payload: map[string]any{"f": json.Number("1.50"), "i": json.Number("123456789012345678901234567890"), "u": "漢"}, PrevHash: GenesisHash}
	e.Hash = Hash(e)
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"event_id":3,"timestamp":"2026-11-22T10:00:00+00:00","kind":"other","source":"s","payload":{"f":1.5,"i":123456789012345678901234567890,"u":"漢"},"prev_hash":"` + GenesisHash + `","hash":"` + e.Hash + `"}`
	if string(b) != want {
		t.Errorf("marshal: got %s, want %s", b, want)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := Hash(back); got != e.Hash {
		t.Errorf("hash after round trip: got %s, want %s", got, e.Hash)
	}
}

func TestConcurrentPosts(t *testing.T) {
	s := Start(t)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				r, err := do(t, client, http.MethodPost, s.URL()+"/events", "application/json", eventBody("other", fmt.Sprint("w", w), fmt.Sprintf(`{"i":%d}`, i)))
				if err != nil || r.status != http.StatusCreated {
					t.Errorf("post: got %v %d, want 201", err, r.status)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	evs := s.Events()
	if len(evs) != workers*each {
		t.Fatalf("events: got %d, want %d", len(evs), workers*each)
	}
	if ok, at, why := s.Verify(); !ok {
		t.Errorf("Verify: got break at %d (%s), want valid", at, why)
	}
}

// outcome is what a client saw for one POST: a status code or "error".
func outcome(t *testing.T, s *Server, c *http.Client) string {
	t.Helper()
	r, err := do(t, c, http.MethodPost, s.URL()+"/events", "application/json", eventBody("other", "s", "{}"))
	if err != nil {
		return "error"
	}
	return fmt.Sprint(r.status)
}

func TestFailNext(t *testing.T) {
	tests := []struct {
		fault       Fault
		want        string // outcome of the faulted POST
		appended    int    // events it appended
		header      string // a header the answer must carry, "Name: value"
		contentType string // of the answer, when it is not JSON
	}{
		{Fault503, "503", 0, "", ""},
		{Fault500, "500", 0, "", "text/plain; charset=utf-8"},
		{Fault429, "429", 0, "Retry-After: 1", ""},
		{FaultDropBefore, "error", 0, "", ""},
		{FaultDropAfter, "error", 1, "", ""},
		{FaultStall, "201", 1, "", ""},
		{FaultReject, "422", 0, "", ""},
		{Fault201HTML, "201", 0, "", "text/html; charset=utf-8"},
		{Fault201HTMLAfter, "201", 1, "", "text/html; charset=utf-8"},
		{FaultStallBody, "error", 1, "", ""},
		{Fault401, "401", 0, "WWW-Authenticate: Bearer", ""},
		{Fault403, "403", 0, "", ""},
		{Fault404, "404", 0, "", ""},
		{Fault405, "405", 0, "Allow: GET", ""},
		{Fault302, "302", 0, "Location: https://sso.example/login", "text/html; charset=utf-8"},
		{FaultNone, "201", 1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.fault.String(), func(t *testing.T) {
			s := Start(t)
			s.SetStall(50 * time.Millisecond)
			s.SetRedirect("https://sso.example/login")
			s.FailNext(2, tt.fault)
			for i := 0; i < 2; i++ {
				start := time.Now()
				r, err := do(t, noRedirects, http.MethodPost, s.URL()+"/events", "application/json", eventBody("other", "s", "{}"))
				got := "error"
				if err == nil {
					got = fmt.Sprint(r.status)
				}
				if got != tt.want {
					t.Fatalf("faulted post %d: got %s (%v), want %s", i+1, got, err, tt.want)
				}
				if name, value, ok := strings.Cut(tt.header, ": "); ok && r.header.Get(name) != value {
					t.Errorf("%s: got %q, want %q", name, r.header.Get(name), value)
				}
				if tt.contentType != "" && r.header.Get("Content-Type") != tt.contentType {
					t.Errorf("Content-Type: got %q, want %q", r.header.Get("Content-Type"), tt.contentType)
				}
				if (tt.fault == FaultStall || tt.fault == FaultStallBody) && time.Since(start) < 50*time.Millisecond {
					t.Errorf("stall: got %v, want at least 50ms", time.Since(start))
				}
			}
			if got, want := len(s.Events()), 2*tt.appended; got != want {
				t.Errorf("events after faulted posts: got %d, want %d", got, want)
			}
			if got := outcome(t, s, client); got != "201" {
				t.Errorf("post after the faults: got %s, want 201", got)
			}
			if got, want := len(s.Events()), 2*tt.appended+1; got != want {
				t.Errorf("events: got %d, want %d", got, want)
			}
			if ok, at, why := s.Verify(); !ok {
				t.Errorf("Verify: got break at %d (%s), want valid", at, why)
			}
			wantFaults := map[Fault]int64{}
			if tt.fault != FaultNone {
				wantFaults[tt.fault] = 2
			}
			if got := s.Faults(); !reflect.DeepEqual(got, wantFaults) {
				t.Errorf("Faults: got %v, want %v", got, wantFaults)
			}
			if got := s.Requests(); got != 3 {
				t.Errorf("Requests: got %d, want 3", got)
			}
		})
	}
}

func TestFailNextQueuesAndSkipsOtherEndpoints(t *testing.T) {
	s := Start(t)
	s.FailNext(1, Fault503)
	s.FailNext(1, Fault429)
	wantStatus(t, get(t, s, "/healthz"), http.StatusOK)
	wantStatus(t, get(t, s, "/events"), http.StatusOK)
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, outcome(t, s, client))
	}
	if want := []string{"503", "429", "201"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestFaultDropAfterIsAmbiguous(t *testing.T) {
	s := Start(t)
	s.FailNext(1, FaultDropAfter)
	_, err := do(t, client, http.MethodPost, s.URL()+"/events", "application/json", eventBody("other", "s", `{"row":1}`))
	if err == nil {
		t.Fatalf("got no error, want a transport error")
	}
	evs := s.Events()
	if len(evs) != 1 || evs[0].Payload["row"] != json.Number("1") {
		t.Fatalf("chain: got %+v, want exactly the dropped event", evs)
	}
	// A producer that retries duplicates the event: the spine does not
	// de-duplicate.
	if got := outcome(t, s, client); got != "201" {
		t.Fatalf("retry: got %s, want 201", got)
	}
	if got := len(s.Events()); got != 2 {
		t.Errorf("events after retry: got %d, want 2", got)
	}
}

func TestFaultStallOutlivesClient(t *testing.T) {
	s := Start(t)
	s.SetStall(time.Hour)
	s.FailNext(1, FaultStall)
	impatient := &http.Client{Timeout: 100 * time.Millisecond}
	if got := outcome(t, s, impatient); got != "error" {
		t.Fatalf("got %s, want error (client timeout)", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := len(s.Events()); got != 1 {
		t.Errorf("events after the client gave up: got %d, want 1", got)
	}
}

// TestFaultStallBodyIsTruncated: the answer announces the whole stored
// event, stops after the configured bytes and the connection closes, while
// the event is in the chain.
func TestFaultStallBodyIsTruncated(t *testing.T) {
	s := Start(t)
	s.SetStall(20 * time.Millisecond)
	s.SetStallBytes(5)
	s.FailNext(1, FaultStallBody)
	resp, err := client.Post(s.URL()+"/events", "application/json", strings.NewReader(eventBody("other", "s", "{}")))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status: got %d, want 201", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("body: got %q and no error, want a truncated read", b)
	}
	if string(b) != `{"eve` {
		t.Errorf("body before the cut: got %q, want %q", b, `{"eve`)
	}
	if resp.ContentLength <= int64(len(b)) {
		t.Errorf("Content-Length: got %d, want more than the %d bytes sent", resp.ContentLength, len(b))
	}
	if got := len(s.Events()); got != 1 {
		t.Errorf("events: got %d, want 1", got)
	}
}

// TestFailNextRead: read faults hit GET /events only, in order, and faults
// that concern an append let the read through.
func TestFailNextRead(t *testing.T) {
	s := Start(t)
	post(t, s, eventBody("other", "s", "{}"))
	s.FailNextRead(1, Fault401)
	s.FailNextRead(1, FaultDropAfter) // not a read fault: served normally
	s.FailNextRead(1, Fault302)
	wantStatus(t, post(t, s, eventBody("other", "s", "{}")), http.StatusCreated)
	wantStatus(t, get(t, s, "/healthz"), http.StatusOK)
	var got []string
	for i := 0; i < 4; i++ {
		r, err := do(t, noRedirects, http.MethodGet, s.URL()+"/events?source=s", "", "")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprint(r.status))
		if r.status == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("WWW-Authenticate: got %q, want Bearer", r.header.Get("WWW-Authenticate"))
		}
	}
	if want := []string{"401", "200", "302", "200"}; !reflect.DeepEqual(got, want) {
		t.Errorf("reads: got %v, want %v", got, want)
	}
	if want := map[Fault]int64{Fault401: 1, Fault302: 1}; !reflect.DeepEqual(s.Faults(), want) {
		t.Errorf("Faults: got %v, want %v", s.Faults(), want)
	}
	if got := s.Requests(); got != 2 {
		t.Errorf("Requests: got %d, want 2 (reads are not counted)", got)
	}
}

// TestFault302DefaultLocation: without SetRedirect the redirect goes to
// /login on the double's own host, which answers 404.
func TestFault302DefaultLocation(t *testing.T) {
	s := Start(t)
	s.FailNext(1, Fault302)
	r, err := do(t, noRedirects, http.MethodPost, s.URL()+"/events", "application/json", eventBody("other", "s", "{}"))
	if err != nil {
		t.Fatal(err)
	}
	if want := s.URL() + "/login"; r.status != http.StatusFound || r.header.Get("Location") != want {
		t.Errorf("got %d Location %q, want 302 Location %q", r.status, r.header.Get("Location"), want)
	}
	if got := len(s.Events()); got != 0 {
		t.Errorf("events: got %d, want 0", got)
	}
}

func TestRandomFaultsDeterministic(t *testing.T) {
	run := func(seed int64) ([]string, map[Fault]int64, int) {
		s := Start(t)
		s.SetRandomFaults(0.5, seed, Fault503, Fault429, FaultDropAfter, FaultReject)
		var seq []string
		for i := 0; i < 60; i++ {
			seq = append(seq, outcome(t, s, client))
		}
		return seq, s.Faults(), len(s.Events())
	}
	a, fa, na := run(42)
	b, fb, nb := run(42)
	if !reflect.DeepEqual(a, b) || !reflect.DeepEqual(fa, fb) || na != nb {
		t.Fatalf("same seed: got %v / %v, want identical runs", a, b)
	}
	c, _, _ := run(43)
	if reflect.DeepEqual(a, c) {
		t.Errorf("seeds 42 and 43: got identical outcomes, want different")
	}
	var injected int64
	for _, n := range fa {
		injected += n
	}
	if injected < 15 || injected > 45 {
		t.Errorf("faults injected with p=0.5 over 60 posts: got %d, want 15..45", injected)
	}
	if want := 60 - int(injected) + int(fa[FaultDropAfter]); na != want {
		t.Errorf("events: got %d, want %d", na, want)
	}
	for f := range fa {
		switch f {
		case Fault503, Fault429, FaultDropAfter, FaultReject:
		default:
			t.Errorf("fault %v injected, want only the listed ones", f)
		}
	}

	s := Start(t)
	s.SetRandomFaults(1, 7)
	s.SetRandomFaults(0, 7)
	for i := 0; i < 10; i++ {
		if got := outcome(t, s, client); got != "201" {
			t.Fatalf("after p=0: got %s, want 201", got)
		}
	}
}

func TestSetDown(t *testing.T) {
	s := Start(t)
	post(t, s, eventBody("other", "s", "{}"))
	s.SetDown(true)
	for _, p := range []struct{ method, path string }{
		{http.MethodPost, "/events"}, {http.MethodGet, "/events"}, {http.MethodGet, "/healthz"}, {http.MethodGet, "/openapi.json"},
	} {
		t.Run(p.method+p.path, func(t *testing.T) {
			r, err := do(t, client, p.method, s.URL()+p.path, "application/json", eventBody("other", "s", "{}"))
			if err == nil {
				t.Errorf("got status %d, want a transport error", r.status)
			}
		})
	}
	s.SetDown(false)
	wantStatus(t, get(t, s, "/healthz"), http.StatusOK)
	wantStatus(t, post(t, s, eventBody("other", "s", "{}")), http.StatusCreated)
	if got := len(s.Events()); got != 2 {
		t.Errorf("events: got %d, want 2", got)
	}
	if got := s.Requests(); got != 2 {
		t.Errorf("Requests: got %d, want 2 (refused ones not counted)", got)
	}
}

func TestNewAsHandler(t *testing.T) {
	s := New("x")
	if s.URL() != "" {
		t.Errorf("URL of New: got %q, want empty", s.URL())
	}
	if got := s.Kinds(); !reflect.DeepEqual(got, []string{"x"}) {
		t.Errorf("Kinds: got %v, want [x]", got)
	}
	if got := New().Kinds(); !reflect.DeepEqual(got, DefaultKinds) {
		t.Errorf("default Kinds: got %v, want %v", got, DefaultKinds)
	}
}

func BenchmarkPost(b *testing.B) {
	ts := Start(b).URL()
	body := eventBody("other", "bench", `{"table":"public.decisions","operation":"UPDATE","new":{"id":"DEC-001","status":"approved","amount":12.5}}`)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := http.Post(ts+"/events", "application/json", strings.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

func BenchmarkHash(b *testing.B) {
	e := Event{EventID: 1, Timestamp: "2026-11-22T10:00:00+00:00", Kind: "other", Source: "bench", PrevHash: GenesisHash,
		Payload: map[string]any{"table": "public.decisions", "new": map[string]any{"id": "DEC-001", "amount": json.Number("12.50")}}}
	for i := 0; i < b.N; i++ {
		Hash(e)
	}
}
