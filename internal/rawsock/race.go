//go:build linux && race

package rawsock

import (
	"runtime"
	"syscall"
	"unsafe"
)

// The race detector treats every read and write made through package
// syscall as a synchronisation point (net.Conn's among them): what one
// goroutine did before writing to a socket happened before what another
// does after reading from it. Raw calls skip that, and the detector would
// report the hand-overs between a test and its servers as races. Under
// the detector, an empty read or write through package syscall makes the
// same mark; the kernel returns at once for those.

// raceRead marks a raw read of p from fd (empty at the end of the stream).
func raceRead(fd uintptr, p []byte) {
	_, _ = syscall.Read(int(fd), nil)
	if len(p) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), len(p))
	}
}

// raceWrite marks a raw write of p to fd; it comes before the write.
func raceWrite(fd uintptr, p []byte) {
	_, _ = syscall.Write(int(fd), nil)
	runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
}
