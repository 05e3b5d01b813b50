package publish

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// stallTimer cancels a request when nothing arrived for its timeout: while
// it waits for the answer to start, and while a read of its body waits for
// the next bytes. Time the caller spends between reads does not count. An
// answer that keeps coming is read whole, however long it takes.
type stallTimer struct {
	d       time.Duration
	t       *time.Timer
	stalled atomic.Bool
	cancel  context.CancelFunc
}

// withStallTimeout returns ctx, cancelled once nothing arrived for d.
func withStallTimeout(ctx context.Context, d time.Duration) (context.Context, *stallTimer) {
	ctx, cancel := context.WithCancel(ctx)
	s := &stallTimer{d: d, cancel: cancel}
	s.t = time.AfterFunc(d, func() {
		s.stalled.Store(true)
		cancel()
	})
	return ctx, s
}

func (s *stallTimer) stop() {
	s.t.Stop()
	s.cancel()
}

// watch returns body, each read of which is timed on its own: the answer
// has started.
func (s *stallTimer) watch(body io.ReadCloser) io.ReadCloser {
	s.t.Stop()
	return &stallReader{ReadCloser: body, s: s}
}

// explain names the stall as the cause of err, when it was.
func (s *stallTimer) explain(err error) error {
	if err != nil && s.stalled.Load() {
		return fmt.Errorf("the spine sent nothing for %s (--spine-timeout): %w", s.d, err)
	}
	return err
}

type stallReader struct {
	io.ReadCloser
	s *stallTimer
}

func (r *stallReader) Read(p []byte) (int, error) {
	if !r.s.stalled.Load() {
		r.s.t.Reset(r.s.d)
	}
	n, err := r.ReadCloser.Read(p)
	r.s.t.Stop()
	return n, err
}
