//go:build !linux

package rawsock

import (
	"errors"
	"net"
	"os"
)

// Wrap returns c: other systems use the ordinary calls.
func Wrap(c net.Conn) net.Conn { return c }

// File is f's ordinary Write on other systems.
type File struct{ f *os.File }

// NewFile returns f's writer.
func NewFile(f *os.File) *File { return &File{f: f} }

// Write is f.Write.
func (w *File) Write(p []byte) (int, error) { return w.f.Write(p) }

var errUnsupported = errors.New("not supported on this system")

// SetInt is not supported on this system.
func SetInt(uintptr, int, int, int) error { return errUnsupported }

// Queued is not supported on this system.
func Queued(uintptr) (int, error) { return 0, errUnsupported }
