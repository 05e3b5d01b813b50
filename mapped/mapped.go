// Package mapped reads a region of a file through a read-only shared
// memory map, and hands back the pages of bytes already used (Release)
// while the rest is still read: a message of hundreds of megabytes then
// never sits whole in the process's memory.
//
// A released page leaves the process, not the file: reading it again reads
// the file again, so a release early or twice costs time, never bytes.
package mapped

import (
	"fmt"
	"os"
)

// Region is n bytes of a file from an offset, mapped. It is used by one
// goroutine, and its bytes must not be kept past Close.
type Region struct {
	mapping []byte // page-aligned, what was mapped
	b       []byte // the region: a view into mapping
	closed  func() // run once the region is unmapped (AfterClose)
}

// Map maps n bytes of f from off. f may be closed (and unlinked) once Map
// returns.
func Map(f *os.File, off, n int64) (*Region, error) {
	if n == 0 {
		return &Region{}, nil
	}
	r, err := mapFile(f, off, n)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes of %s: %w", n, f.Name(), err)
	}
	return r, nil
}

// TempFile makes a file in dir, named after pattern (os.CreateTemp), and
// unlinks it at once: it is gone with the process, whatever way that ends.
func TempFile(dir, pattern string) (*os.File, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Bytes is the region.
func (r *Region) Bytes() []byte { return r.b }

// Release hands back every whole page of the region inside p, a view into
// Bytes.
func (r *Region) Release(p []byte) {
	if len(p) == 0 || r.mapping == nil {
		return
	}
	release(r.mapping, p)
}

// AfterClose has f run once the region is unmapped: an unlinked file's
// blocks are freed then, not when the file is closed.
func (r *Region) AfterClose(f func()) { r.closed = f }

// Close unmaps the region.
func (r *Region) Close() error {
	if r == nil {
		return nil
	}
	if f := r.closed; f != nil {
		r.closed = nil
		defer f()
	}
	if r.mapping == nil {
		return nil
	}
	m := r.mapping
	r.mapping, r.b = nil, nil
	return unmap(m)
}
