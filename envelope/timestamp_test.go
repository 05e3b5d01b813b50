package envelope

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestAppendTimestamp checks the hand-written formatting against the
// layouts it replaces, on edges and on random instants (PostgreSQL's whole
// timestamp range, other zones, sub-microsecond parts).
func TestAppendTimestamp(t *testing.T) {
	want := func(t time.Time) string {
		t = t.UTC()
		if t.Nanosecond()/1000 == 0 {
			return t.Format("2006-01-02T15:04:05+00:00")
		}
		return t.Format("2006-01-02T15:04:05.000000+00:00")
	}
	cases := []time.Time{
		time.Date(2026, 11, 28, 16, 45, 42, 0, time.UTC),
		time.Date(2026, 11, 28, 16, 45, 42, 999, time.UTC),  // below a microsecond: none written
		time.Date(2026, 11, 28, 16, 45, 42, 1000, time.UTC), // .000001
		time.Date(2026, 11, 28, 16, 45, 42, 999999999, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), // PostgreSQL's epoch
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(0, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC), // PostgreSQL's earliest
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC), // PostgreSQL's latest
		time.Date(2026, 3, 29, 1, 30, 0, 5000, time.FixedZone("CET", 3600)),
		{},
	}
	r := rand.New(rand.NewPCG(1, 2))
	lo, hi := cases[7].Unix(), cases[10].Unix()
	for range 20000 {
		cases = append(cases, time.Unix(lo+r.Int64N(hi-lo), r.Int64N(1e9)))
	}
	for _, tc := range cases {
		if got, w := FormatTimestamp(tc), want(tc); got != w {
			t.Fatalf("FormatTimestamp(%v) = %q, want %q", tc, got, w)
		}
	}
	if got := string(AppendTimestamp([]byte("at "), cases[0])); got != "at 2026-11-28T16:45:42+00:00" {
		t.Errorf("AppendTimestamp appends: got %q", got)
	}
}
