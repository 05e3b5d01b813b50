package backoff

import (
	"context"
	"errors"
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

// TestSleep: a wait that runs out returns nil, a context that ends first
// cuts it short with its error, and a non-positive wait returns at once.
func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep(1ms) = %v, want nil", err)
	}
	if err := Sleep(context.Background(), -time.Second); err != nil {
		t.Errorf("Sleep(-1s) = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { done <- Sleep(ctx, time.Hour) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Sleep(1h) with a cancelled context = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Sleep(1h) did not end 10 s after its context was cancelled")
	}
}
