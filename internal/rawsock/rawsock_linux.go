package rawsock

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// rwfNoWait is RWF_NOWAIT (linux/fs.h), the same on every architecture.
const rwfNoWait = 0x8

// Wrap returns c reading and writing through raw system calls when it is
// a stream socket (TCP, or Unix-domain of type "unix"), and c itself
// otherwise. Deadlines, Close and the rest are c's own. The result
// implements syscall.Conn. Like every connection of the agent, it has one
// writer at a time: a Write that waits for room may interleave with
// another goroutine's.
func Wrap(c net.Conn) net.Conn {
	network := "tcp"
	switch c.(type) {
	case *net.TCPConn:
	case *net.UnixConn:
		if a := c.LocalAddr(); a == nil || a.Network() != "unix" {
			return c // datagrams and packets: Read and Write keep their bounds there
		}
		network = "unix"
	default:
		return c
	}
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	return &conn{Conn: c, raw: raw, network: network}
}

type conn struct {
	net.Conn
	raw     syscall.RawConn
	network string // for errors
}

// SyscallConn returns the socket's RawConn.
func (c *conn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// Read reads what the socket holds, up to MaxPiece bytes, waiting through
// the runtime's poller (and the read deadline) while it holds nothing.
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	p = p[:min(len(p), MaxPiece)]
	var n int
	var errno syscall.Errno
	err := c.raw.Read(func(fd uintptr) bool {
		n, errno = retry(syscall.SYS_READ, fd, p)
		if errno == 0 {
			raceRead(fd, p[:n]) // the end of the stream too, as syscall.Read
		}
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, MaxPiece bytes at a time, waiting through the
// runtime's poller (and the write deadline) while the socket is full.
func (c *conn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		piece := p[n:][:min(len(p)-n, MaxPiece)]
		var m int
		var errno syscall.Errno
		err := c.raw.Write(func(fd uintptr) bool {
			raceWrite(fd, piece)
			m, errno = retry(syscall.SYS_WRITE, fd, piece)
			return errno != syscall.EAGAIN
		})
		n += m
		switch {
		case err != nil:
			return n, c.opError("write", err)
		case errno != 0:
			return n, c.opError("write", os.NewSyscallError("write", errno))
		case m == 0:
			return n, c.opError("write", io.ErrShortWrite) // a socket never does this
		}
	}
	return n, nil
}

// retry makes one read or write of p, again when a signal interrupted it.
func retry(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if errno != syscall.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(r), 0
		}
	}
}

// opError wraps err as net.Conn's own errors are (*net.OpError with op
// "read" or "write"): crypto/tls keeps any other error for good and would
// return it from every later call, and timeouts must stay net.Errors.
func (c *conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		// RawConn's own, made for this call (a deadline, a close): it
		// names the raw call ("raw-read").
		oe.Op = op
		return oe
	}
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// File writes to an open file without telling the runtime when the kernel
// can take the bytes at once (pwritev2 with RWF_NOWAIT: a pipe with room,
// /dev/null), and through the file's ordinary Write for the rest (a full
// pipe, a terminal, a file system that cannot promise not to wait).
type File struct {
	f       *os.File
	raw     syscall.RawConn
	refused atomic.Bool // the kernel refused RWF_NOWAIT for this file: ordinary writes only

	// For tests: bytes written each way.
	rawBytes, plainBytes atomic.Int64
}

// NewFile returns f's writer.
func NewFile(f *os.File) *File {
	w := &File{f: f}
	raw, err := f.SyscallConn()
	if err != nil || sysPwritev2 == 0 {
		w.refused.Store(true)
	}
	w.raw = raw
	return w
}

// Write writes all of p, or returns the ordinary Write's error.
func (w *File) Write(p []byte) (int, error) {
	n := 0
	if !w.refused.Load() && len(p) > 0 {
		_ = w.raw.Control(func(fd uintptr) {
			for n < len(p) {
				piece := p[n:][:min(len(p)-n, MaxPiece)]
				raceWrite(fd, piece)
				m, errno := nowait(fd, piece)
				switch errno {
				case 0:
					if m > 0 {
						n += m
						continue
					}
				case syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.EINVAL, syscall.ESPIPE:
					w.refused.Store(true)
				}
				return // EAGAIN: it would wait; anything else: Write reports it
			}
		})
		w.rawBytes.Add(int64(n))
	}
	if n == len(p) {
		return n, nil
	}
	m, err := w.f.Write(p[n:])
	w.plainBytes.Add(int64(m))
	return n + m, err
}

// nowait writes p at the file's position unless the kernel would have to
// wait for it.
func nowait(fd uintptr, p []byte) (int, syscall.Errno) {
	iov := syscall.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	const current = ^uintptr(0) // offset -1: the file's position, as write(2)
	for {
		r, _, errno := syscall.RawSyscall6(sysPwritev2, fd, uintptr(unsafe.Pointer(&iov)), 1, current, 0, rwfNoWait)
		if errno != syscall.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(r), 0
		}
	}
}

// SetInt sets a socket option on fd.
func SetInt(fd uintptr, level, opt, v int) error {
	i := int32(v)
	_, _, errno := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&i)), 4, 0)
	if errno != 0 {
		return os.NewSyscallError("setsockopt", errno)
	}
	return nil
}

// Queued returns the bytes in the receive queue of the socket fd.
func Queued(fd uintptr) (int, error) {
	var n int32
	// TIOCINQ is SIOCINQ (FIONREAD), whose number differs between
	// architectures.
	_, _, errno := syscall.RawSyscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	if errno != 0 {
		return 0, os.NewSyscallError("ioctl SIOCINQ", errno)
	}
	return int(n), nil
}
