package publish

import "syscall"

// tcpNotSentLowat is Linux's TCP_NOTSENT_LOWAT, the same number on every
// architecture (package syscall names it on only some of them).
const tcpNotSentLowat = 0x19

// unsentLimit bounds what a connection to the spine holds in the kernel
// not yet sent. Without it, Linux takes up to 4 MiB of a request into the
// socket's send buffer at once and wakes a blocked write only when a large
// part of that has gone: over a slow link a write then made no visible
// progress for longer than --spine-timeout although the link kept moving,
// and the wait for the answer also covered the crossing of those MiB.
// With it, the kernel holds at most this much unsent; what is in flight on
// the wire is not limited, so throughput is not.
const unsentLimit = 128 << 10

// limitUnsent is a net.Dialer Control function that sets unsentLimit on
// the socket. A socket or kernel that refuses it is used as it is.
func limitUnsent(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, unsentLimit)
	})
}
