package backoff

import (
	"testing"
	"time"
)

func TestDelayBounds(t *testing.T) {
	tests := []struct {
		attempt  int
		min, max time.Duration
	}{
		{0, 200 * time.Millisecond, 200 * time.Millisecond},
		{1, 200 * time.Millisecond, 400 * time.Millisecond},
		{3, 200 * time.Millisecond, 1600 * time.Millisecond},
		{20, 200 * time.Millisecond, 30 * time.Second},
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
