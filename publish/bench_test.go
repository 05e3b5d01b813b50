package publish_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// benchBody is a typical envelope: an UPDATE of an eight-column row with
// REPLICA IDENTITY FULL (the size bench/ measures, about 1 kB).
var benchBody = []byte(`{"kind":"decision_card_status_changed","source":"procurement-api","timestamp":"2026-11-22T19:34:41.416978+00:00","payload":{"table":"public.orders","operation":"UPDATE",` +
	`"old":{"id":424242,"account_id":4243,"status":"paid","amount":"6060.29","paid":false,"note":"order 424242 for customer 4242 via web checkout","created_at":"2026-01-05T21:50:42+00:00","details":{"qty":6,"sku":"SKU-551","tags":["gift","express"]}},` +
	`"new":{"id":424242,"account_id":4243,"status":"shipped","amount":"6061.54","paid":true,"note":"order 424242 for customer 4242 via web checkout","created_at":"2026-01-05T21:50:42+00:00","details":{"qty":6,"sku":"SKU-551","tags":["gift","express"],"shipped":true}},` +
	`"metadata":{"commit_lsn":"1/6B374D48","lsn":"1/6B374100","xid":91234,"commit_timestamp":"2026-11-22T19:34:41.416978+00:00","idempotency_key":"pgaudit-cdc:7441925118437418807:pgaudit_cdc:000000016B374D48:1"}}}`)

// benchKey is benchBody's idempotency key.
const benchKey = "pgaudit-cdc:7441925118437418807:pgaudit_cdc:000000016B374D48:1"

// benchEcho is what the spine answers to benchBody: the stored event, about
// as large as the envelope, after its event_id (see instantSpine).
var benchEcho = func() []byte {
	var req struct {
		Kind      string          `json:"kind"`
		Source    string          `json:"source"`
		Timestamp string          `json:"timestamp"`
		Payload   json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(benchBody, &req); err != nil {
		panic(err)
	}
	hash := strings.Repeat("ab", 32)
	return []byte(`"timestamp":"` + req.Timestamp + `","kind":"` + req.Kind + `","source":"` + req.Source +
		`","payload":` + string(req.Payload) + `,"prev_hash":"` + hash + `","hash":"` + hash + `"}`)
}()

// instantSpine answers POST /events with 201 and benchEcho under the next
// event_id (a spine whose ids do not grow lost its history, which the
// client reports), and the client's read-back with an empty list.
func instantSpine(b *testing.B) *httptest.Server {
	var id atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "[]")
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(append(strconv.AppendInt([]byte(`{"event_id":`), id.Add(1), 10), ',')) // net/http buffers both writes
		_, _ = w.Write(benchEcho)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkClientPublish is one event delivered by publish.Client to a
// loopback spine that answers at once (client and server in this process).
func BenchmarkClientPublish(b *testing.B) {
	srv := instantSpine(b)
	c, err := publish.NewClient(publish.ClientConfig{URL: srv.URL})
	if err != nil {
		b.Fatal(err)
	}
	c.SetIdentity("7441925118437418807", "pgaudit_cdc")
	ctx := context.Background()
	ev := &envelope.Event{Body: benchBody, Pos: envelope.Position{CommitLSN: 1}}
	ev.Key, ev.Source = benchKey, "procurement-api"
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	for b.Loop() {
		ev.Pos.Seq++
		if err := c.Publish(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPlainPost is the baseline for BenchmarkClientPublish: a bare
// keep-alive net/http POST of the same body.
func BenchmarkPlainPost(b *testing.B) {
	srv := instantSpine(b)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer hc.CloseIdleConnections()
	url := srv.URL + "/events"
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(benchBody))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("HTTP %d", resp.StatusCode)
		}
	}
}

// BenchmarkWriterPublish is the built-in stdout sink writing to a discarding
// writer.
func BenchmarkWriterPublish(b *testing.B) {
	w := publish.NewWriter(io.Discard)
	ev := &envelope.Event{Body: benchBody}
	ctx := context.Background()
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Publish(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedeliverEncode is what a dead letter costs when it is retried:
// parsed back into its value, marked, encoded again.
func BenchmarkRedeliverEncode(b *testing.B) {
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		env, err := envelope.Parse(benchBody)
		if err != nil {
			b.Fatal(err)
		}
		env.Redelivered = true
		if out := env.Encode(); !bytes.Contains(out, []byte(`"redelivered":true`)) {
			b.Fatal("not marked")
		}
	}
}
