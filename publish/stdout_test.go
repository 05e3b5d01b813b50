package publish

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// failingWriter accepts n writes, then fails.
type failingWriter struct {
	bytes.Buffer
	writes, okWrites int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > w.okWrites {
		return 0, errors.New("disk full")
	}
	return w.Buffer.Write(p)
}

func TestWriterPublishBatch(t *testing.T) {
	const half = writerChunk/2 - 100
	body := func(n int, c string) []byte { return []byte(`{"x":"` + strings.Repeat(c, n) + `"}`) }
	tests := []struct {
		name       string
		sizes      []int
		okWrites   int
		wantWrites int // at most
		wantOK     int // events reported accepted
	}{
		{"small events share one write", []int{10, 20, 30, 40}, 100, 1, 4},
		{"a large event is written on its own", []int{10, writerChunk + 5, 10}, 100, 3, 3},
		{"chunks of at most a MiB", []int{half, half, half}, 100, 2, 3},
		{"a failed write fails the rest", []int{half, half, half, 10}, 1, 2, 2},
		{"nothing", nil, 100, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &failingWriter{okWrites: tt.okWrites}
			s := NewWriter(w)
			var evs []*envelope.Event
			var want bytes.Buffer
			for i, n := range tt.sizes {
				ev := &envelope.Event{Body: body(n, string(rune('a'+i)))}
				evs = append(evs, ev)
				if i < tt.wantOK {
					want.Write(ev.Body)
					want.WriteByte('\n')
				}
			}
			var order []int
			ok := 0
			failedFrom := -1
			err := s.PublishBatch(context.Background(), evs, func(i int, err error) {
				order = append(order, i)
				if err == nil {
					if failedFrom >= 0 {
						t.Errorf("event %d accepted after event %d failed", i, failedFrom)
					}
					ok++
				} else if failedFrom < 0 {
					failedFrom = i
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			for i, got := range order {
				if got != i {
					t.Fatalf("done called in order %v, want 0..%d", order, len(evs)-1)
				}
			}
			if len(order) != len(evs) {
				t.Fatalf("done called %d times, want %d", len(order), len(evs))
			}
			if ok != tt.wantOK {
				t.Errorf("%d accepted, want %d", ok, tt.wantOK)
			}
			if w.writes > tt.wantWrites {
				t.Errorf("%d writes, want at most %d", w.writes, tt.wantWrites)
			}
			if !bytes.Equal(w.Bytes(), want.Bytes()) {
				t.Errorf("wrote %d bytes, want the %d bytes of the accepted events as lines", w.Len(), want.Len())
			}
		})
	}
}
