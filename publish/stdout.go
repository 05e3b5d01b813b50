package publish

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
)

// Writer is the built-in sink used when no spine URL is configured: each
// envelope is written as one JSON line. A write that returns is accepted.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a sink writing JSON lines to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Publish writes ev's envelope and a newline.
func (s *Writer) Publish(_ context.Context, ev *decode.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Appending past len(ev.Body) leaves the event's bytes as they are; it
	// reuses the spare capacity the envelope usually has.
	line := append(ev.Body[:len(ev.Body):cap(ev.Body)], '\n')
	if _, err := s.w.Write(line); err != nil {
		return fmt.Errorf("writing the event: %w", err)
	}
	return nil
}
