package mapped

import (
	"sync"
	"testing"
)

// TestQuotaTryAddNeverOvershoots: writers racing for the last bytes never
// count more than the quota between them.
func TestQuotaTryAddNeverOvershoots(t *testing.T) {
	q := NewQuota(1000)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if q.TryAdd(7) {
					if q.Used() > q.Max() {
						t.Errorf("used %d over the quota %d", q.Used(), q.Max())
					}
					q.Add(-7)
				}
			}
		})
	}
	wg.Wait()
	if q.Used() != 0 {
		t.Fatalf("used %d after every writer gave back", q.Used())
	}
	if !q.TryAdd(1000) || q.TryAdd(1) {
		t.Fatal("TryAdd does not fill the quota exactly")
	}
}
