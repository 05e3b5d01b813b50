package backoff

import (
	"testing"
	"time"
)

func TestDelayBounds(t *testing.T) {
	// With a 200 ms first step and a 30 s cap: the step doubles per attempt.
	tests := []struct {
		attempt int
		max     time.Duration
	}{
		{0, 200 * time.Millisecond},
		{1, 400 * time.Millisecond},
		{3, 1600 * time.Millisecond},
		{20, 30 * time.Second},
	}
	for _, tt := range tests {
		for i := 0; i < 200; i++ {
			d := Delay(tt.attempt, 200*time.Millisecond, 30*time.Second)
			if d < tt.max/2 || d > tt.max {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", tt.attempt, d, tt.max/2, tt.max)
			}
		}
	}
}
