//go:build unix

package mapped

import (
	"os"
	"syscall"
	"unsafe"
)

var pageSize = int64(os.Getpagesize())

func mapFile(f *os.File, off, n int64) (*Region, error) {
	start := off &^ (pageSize - 1)
	m, err := syscall.Mmap(int(f.Fd()), start, int(off-start+n), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	skip := off - start
	return &Region{mapping: m, b: m[skip : skip+n : skip+n]}, nil
}

// release drops the pages of m wholly inside p. MADV_DONTNEED on a shared
// file mapping frees the process's pages; the next read maps the file's
// again.
func release(m, p []byte) {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(m)))
	from := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	if from < base || from+uintptr(len(p)) > base+uintptr(len(m)) {
		return
	}
	ps := uintptr(pageSize)
	lo := (from - base + ps - 1) &^ (ps - 1)
	hi := (from - base + uintptr(len(p))) &^ (ps - 1)
	if hi <= lo {
		return
	}
	// Advice, not a promise: a failure only keeps the pages.
	_ = syscall.Madvise(m[lo:hi], syscall.MADV_DONTNEED)
}

func unmap(m []byte) error { return syscall.Munmap(m) }
