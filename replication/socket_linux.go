package replication

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// lowWaterMarks: Linux's poll and epoll report a TCP socket readable only
// once it holds SO_RCVLOWAT bytes, and the kernel skips the wake-up below it.
const lowWaterMarks = true

// awaitBytes blocks until the socket holds at least n bytes, or until its
// read deadline passed (os.ErrDeadlineExceeded). It reads nothing. The low
// water mark is raised only for the wait: a later read must return the
// rest of a message as soon as it is there. Any other error (the mark or
// the queue length cannot be had) means the wait cannot be made this way.
func awaitBytes(raw syscall.RawConn, n int) error {
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_RCVLOWAT: %w", serr)
	}
	defer raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, 1)
	})
	// The runtime calls this first, then again each time the poller says
	// the socket became readable, which with the raised mark means n
	// bytes; it also covers bytes that were there before the wait began.
	var ierr error
	err := raw.Read(func(fd uintptr) bool {
		var avail int32
		// TIOCINQ is SIOCINQ (FIONREAD), whose number differs between
		// architectures: the bytes in the socket's receive queue.
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&avail)))
		if errno != 0 {
			ierr = fmt.Errorf("reading SIOCINQ: %w", errno)
			return true
		}
		return int(avail) >= n
	})
	if err != nil {
		return err
	}
	return ierr
}

// rawRead reads what the socket holds into p, waiting through the runtime's
// network poller (and the read deadline) while it holds nothing.
//
// net.Conn's Read enters the system call the way a blocking one is
// entered: the runtime's monitor hands the goroutine's P to another thread
// when the call lasts two of its ticks (20 µs and up). A read of a loopback
// TCP socket often does, because it also sends the window update and runs
// the peer's side of it; then the reader comes back to find its P gone and
// waits on a futex for it. The socket is non-blocking, so the read itself
// never waits: made as a raw system call it keeps its P, which at thousands
// of transactions a second saved that hand-off and wake-up per read. Only
// meteredConn's own buffer is read this way, so that one call copies at
// most readBuffer bytes while it holds the P.
//
// Errors are wrapped as net.Conn's are (*net.OpError): crypto/tls keeps a
// non-net.Error for good and would return it from every later read.
func rawRead(c net.Conn, raw syscall.RawConn, p []byte) (n int, err error) {
	if len(p) == 0 {
		return 0, nil
	}
	rerr := raw.Read(func(fd uintptr) bool {
		for {
			r, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch errno {
			case 0:
				n = int(r)
				if n == 0 {
					err = io.EOF
				}
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(),
					Err: os.NewSyscallError("read", errno)}
				return true
			}
		}
	})
	if rerr != nil {
		return 0, rerr
	}
	return n, err
}
