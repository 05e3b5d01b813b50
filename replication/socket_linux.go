package replication

import (
	"fmt"
	"syscall"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
)

// lowWaterMarks: Linux's poll and epoll report a TCP socket readable only
// once it holds SO_RCVLOWAT bytes, and the kernel skips the wake-up below it.
const lowWaterMarks = true

// awaitBytes blocks until the socket holds at least n bytes, or until its
// read deadline passed (os.ErrDeadlineExceeded). It reads nothing. The low
// water mark is raised only for the wait: a later read must return the
// rest of a message as soon as it is there. Any other error (the mark or
// the queue length cannot be had) means the wait cannot be made this way.
// Its system calls are raw ones (package rawsock): they never wait.
func awaitBytes(raw syscall.RawConn, n int) error {
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = rawsock.SetInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting SO_RCVLOWAT: %w", serr)
	}
	defer raw.Control(func(fd uintptr) {
		_ = rawsock.SetInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, 1)
	})
	// The runtime calls this first, then again each time the poller says
	// the socket became readable, which with the raised mark means n
	// bytes; it also covers bytes that were there before the wait began.
	var qerr error
	err := raw.Read(func(fd uintptr) bool {
		queued, err := rawsock.Queued(fd)
		if err != nil {
			qerr = err
			return true
		}
		return queued >= n
	})
	if err != nil {
		return err
	}
	return qerr
}
