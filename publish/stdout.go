package publish

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
)

// Writer is the built-in sink used when no spine URL is configured: each
// envelope is written as one JSON line. A write that returns is accepted.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte // PublishBatch's lines, reused
}

// NewWriter returns a sink writing JSON lines to w. A file (standard
// output) is written with raw system calls where they need not wait
// (package rawsock).
func NewWriter(w io.Writer) *Writer {
	if f, ok := w.(*os.File); ok {
		w = rawsock.NewFile(f)
	}
	return &Writer{w: w}
}

// Publish writes ev's envelope and a newline.
func (s *Writer) Publish(_ context.Context, ev *envelope.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(line(ev.Body)); err != nil {
		return fmt.Errorf("writing the event: %w", err)
	}
	return nil
}

// line is body and a newline. Appending past len(body) leaves the event's
// bytes as they are; it reuses the spare capacity the envelope usually has
// instead of copying it.
func line(body []byte) []byte {
	return append(body[:len(body):cap(body)], '\n')
}

// Most bytes PublishBatch writes at once.
const writerChunk = 1 << 20

// PublishBatch writes the envelopes of evs as JSON lines with as few writes
// as it can (one per MiB), then reports each accepted in order; a failed
// write fails every event it carried and every one after it. The agent
// hands over many small transactions at a time under load, and one system
// call per event was a large part of its CPU per transaction.
func (s *Writer) PublishBatch(_ context.Context, evs []*envelope.Event, done func(i int, err error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for settled := 0; settled < len(evs); {
		// evs[settled:end] go out in one write.
		var out []byte
		end := settled + 1
		if body := evs[settled].Body; len(body) >= writerChunk {
			out = line(body) // a large event alone, from its own bytes
		} else {
			s.buf = append(append(s.buf[:0], body...), '\n')
			for end < len(evs) && len(s.buf)+len(evs[end].Body) < writerChunk {
				s.buf = append(append(s.buf, evs[end].Body...), '\n')
				end++
			}
			out = s.buf
		}
		if _, err := s.w.Write(out); err != nil {
			err = fmt.Errorf("writing the event: %w", err)
			for i := settled; i < len(evs); i++ {
				done(i, err)
			}
			return nil
		}
		for ; settled < end; settled++ {
			done(settled, nil)
		}
	}
	return nil
}
