//go:build !unix

package mapped

import (
	"io"
	"os"
)

// mapFile reads the region where the system has no mmap: the same bytes,
// held whole.
func mapFile(f *os.File, off, n int64) (*Region, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(io.NewSectionReader(f, off, n), b); err != nil {
		return nil, err
	}
	return &Region{b: b}, nil
}

func release(m, p []byte) {}

func unmap(m []byte) error { return nil }
