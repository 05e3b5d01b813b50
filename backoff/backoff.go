// Package backoff paces retries: of deliveries to the spine, of database
// reconnects, of dead-letter writes. One policy everywhere, so that a
// restarted fleet spreads out the same way whatever it retries.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay is the wait before retry number attempt (0-based): a random duration
// in [d/2, d] where d = min·2^attempt, capped at max ("equal jitter": never
// less than half the step, so retries still back off, while agents
// restarted together spread out).
func Delay(attempt int, minD, maxD time.Duration) time.Duration {
	d := minD
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	if d > maxD {
		d = maxD
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// Sleep waits for d, or until ctx ends: then it returns ctx.Err() at once.
// It returns nil at once when d is not positive.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
