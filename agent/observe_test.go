package agent_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/metrics"
)

// observer is what an operator sees of an agent the harness starts: its
// Prometheus metrics and /readyz (metrics.Handler, as `run --metrics-addr`
// serves them) and its log. After h.observe(), every agent the harness
// starts reports to the same observer, and its spine client reports through
// metrics.PublishHooks, as `run` wires it.
type observer struct {
	m     *metrics.Metrics
	ready *metrics.Readiness
	logs  *logBuffer
}

// observe makes the harness's agents report to one observer (created on the
// first call) and returns it.
func (h *harness) observe() *observer {
	if h.obs == nil {
		h.obs = &observer{m: metrics.New(), ready: &metrics.Readiness{}, logs: &logBuffer{}}
	}
	return h.obs
}

// get serves one GET of path through the metrics handler.
func (o *observer) get(t *testing.T, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	o.m.Handler(o.ready).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// metric returns the value of one series as GET /metrics serves it, and
// whether the series exists. labels are name, value pairs, in the order
// Prometheus writes them (sorted by name).
func (o *observer) metric(t *testing.T, name string, labels ...string) (float64, bool) {
	t.Helper()
	series := name
	if len(labels) > 0 {
		var parts []string
		for i := 0; i+1 < len(labels); i += 2 {
			parts = append(parts, labels[i]+"="+strconv.Quote(labels[i+1]))
		}
		series += "{" + strings.Join(parts, ",") + "}"
	}
	code, body := o.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v, true
		}
	}
	return 0, false
}

// expectMetric fails unless the series has value want (an absent series
// counts as 0).
func (o *observer) expectMetric(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	if got, _ := o.metric(t, name, labels...); got != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// waitMetric waits until the series has value want.
func (o *observer) waitMetric(t *testing.T, within time.Duration, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, _ := o.metric(t, name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v after %s, want %v", name, labels, got, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyz returns GET /readyz's status code and body.
func (o *observer) readyz(t *testing.T) (int, string) {
	t.Helper()
	return o.get(t, "/readyz")
}

// logLines returns the agent's log lines that contain every one of subs.
func (o *observer) logLines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(o.logs.String(), "\n") {
		all := line != ""
		for _, s := range subs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// expectLog fails unless exactly n log lines contain every one of subs (n <
// 0: at least one).
func (o *observer) expectLog(t *testing.T, n int, subs ...string) []string {
	t.Helper()
	lines := o.logLines(subs...)
	if (n < 0 && len(lines) == 0) || (n >= 0 && len(lines) != n) {
		t.Fatalf("%d log lines contain all of %q, want %d; the log:\n%s", len(lines), subs, n, o.logs.String())
	}
	return lines
}

// waitLog waits until a log line contains every one of subs.
func (o *observer) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(o.logLines(subs...)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line contains all of %q within 10s; the log:\n%s", subs, o.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer keeps what the agent logs; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var _ io.Writer = (*logBuffer)(nil)
