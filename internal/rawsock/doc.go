// Package rawsock makes the system calls of the agent's steady flow (the
// replication socket, the spine's connections, and standard output when
// that is the sink) as raw system calls: the Go runtime is not told that
// the thread enters the kernel.
//
// Why. When every P is idle, the runtime's monitor thread (sysmon) sleeps
// until the next timer. The first ordinary system call after that wakes it,
// and a monitor woken that way polls every 20 µs again, backing off only
// after 1 ms without finding a P to take back. The agent under steady load
// works in short rounds (a few hundred µs every few ms, see the reader's
// gather), each started by a read and ended by a write, so the monitor
// spent every round at its fastest poll: 15 % of the agent's CPU at 10,000
// single-row transactions a second, 1.5 µs per transaction, in `perf`.
// With the calls made raw, the monitor stays asleep through the rounds.
//
// This is safe only for calls that cannot wait: a raw call keeps its P, and
// a garbage collection cannot stop the goroutine until it returns. Sockets
// are non-blocking (the runtime's poller does the waiting, deadlines
// included), each call moves at most MaxPiece bytes, and files are written
// with RWF_NOWAIT, so the kernel refuses rather than waits; whatever would
// wait goes through the ordinary call instead.
//
// Other systems, and other kinds of connection, use the ordinary calls.
package rawsock

// MaxPiece is the most one raw read or write moves: a copy of this size
// keeps the P for some tens of µs at most. A read that returns less than
// min(len(p), MaxPiece) emptied the socket.
const MaxPiece = 256 << 10
