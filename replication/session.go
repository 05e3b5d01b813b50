package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// SessionGUCs fix the text output of every type for the decoder: ISO dates in
// UTC, ISO 8601 intervals, shortest exact floats, hex bytea. Output functions
// run in the walsender, so they follow the replication connection's settings.
var SessionGUCs = map[string]string{
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "iso_8601",
	"TimeZone":           "UTC",
	"extra_float_digits": "1",
	"bytea_output":       "hex",
	"lc_monetary":        "C",
	"application_name":   "pgaudit-cdc",
}

// Session is one replication connection (replication=database).
type Session struct {
	conn     *pgconn.PgConn
	SystemID string
	Timeline int32

	// Receive's deadline and cancellation live on the connection itself
	// (see Receive): the deadline applied to it, the context whose end
	// interrupts a read, and the registration that does so.
	rmu       sync.Mutex
	rdeadline time.Time
	rparent   context.Context
	rstop     func() bool
	rdone     bool // rparent ended: no read may wait any more

	sock *socket // see Drained and Gather

	div    *diverter      // nil when large messages are read into memory
	region *mapped.Region // the last message received, when it was set aside
}

// socket is what the session knows of the connection's own socket, below
// TLS: whether the last read emptied it, and the socket itself for Gather.
// It is filled in by the dial function, which pgconn calls once or more per
// host tried (twice with sslmode=prefer) and again for a cancel request
// once the session is being torn down: the last successful dial before the
// session starts is its connection.
type socket struct {
	drained atomic.Bool
	conn    atomic.Pointer[meteredConn]
}

// ErrSlotInUse is wrapped when another process streams from the slot: the
// caller waits as a standby.
var ErrSlotInUse = errors.New("replication slot is in use by another process")

// Divert says where a session sets aside the messages over DivertOver as
// they arrive (see diverter), rather than hold them whole in memory: a
// directory, and the quota its files count against (none when nil). With
// no directory nothing is set aside.
type Divert struct {
	Dir   string
	Quota *mapped.Quota
}

// Connect opens a replication connection and identifies the server,
// setting large messages aside as divert says.
func Connect(ctx context.Context, dsn string, divert Divert) (*Session, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing the database URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range SessionGUCs {
		if _, set := cfg.RuntimeParams[k]; !set || k != "application_name" {
			cfg.RuntimeParams[k] = v
		}
	}
	sock := new(socket)
	if dial := cfg.DialFunc; dial != nil {
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			m := &meteredConn{Conn: rawsock.Wrap(c), drained: &sock.drained}
			if tc, ok := c.(*net.TCPConn); ok {
				m.raw, _ = tc.SyscallConn()
			}
			sock.conn.Store(m)
			return m, nil
		}
	}
	// pgconn builds a frontend per connection attempt: the last one built
	// is the connection's.
	var div *diverter
	if divert.Dir != "" {
		cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
			div = newDiverter(r, divert, DivertOver)
			return pgproto3.NewFrontend(div, w)
		}
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, Explain(fmt.Errorf("opening the replication connection: %w", err))
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, Explain(fmt.Errorf("identifying the server: %w", err))
	}
	return &Session{conn: conn, SystemID: sys.SystemID, Timeline: sys.Timeline, sock: sock, div: div}, nil
}

// meteredConn notes whether its last read took all the socket had (a read
// returning less than it asked for emptied the socket's receive buffer),
// and reads the socket in large pieces.
//
// pgproto3 asks for 8 KiB at a time. Under load each gather round then
// took several read system calls, and each read of a loopback TCP socket
// also sends the window update and runs the peer's receive path. One read
// of up to readBuffer takes what a round gathered. The socket underneath
// is read and written with raw system calls (package rawsock).
type meteredConn struct {
	net.Conn
	drained *atomic.Bool
	raw     syscall.RawConn // a TCP socket's, for Gather; nil otherwise
	buf     []byte          // read from the socket, not yet taken: buf[off:]
	off     int
	err     error // came with the bytes in buf: returned once they are taken

	gatherOff bool // Gather's wait failed once: it sleeps (Gather's alone)
}

// readBuffer is the size of meteredConn's reads: more than Gather lets
// gather (gatherBytes), so that one read takes a whole round.
const readBuffer = 64 << 10

func (c *meteredConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.off < len(c.buf) {
		n := copy(p, c.buf[c.off:])
		c.off += n
		return n, nil
	}
	if err := c.err; err != nil {
		c.err = nil
		return 0, err
	}
	if len(p) >= readBuffer {
		// A large message: straight into pgproto3's buffer, a piece at a
		// time.
		p = p[:min(len(p), rawsock.MaxPiece)]
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.drained.Store(n < len(p))
		}
		return n, err
	}
	if c.buf == nil {
		c.buf = make([]byte, readBuffer)
	}
	n, err := c.Conn.Read(c.buf[:readBuffer])
	if n <= 0 {
		// A read that timed out before any byte (Poll) says nothing.
		c.buf, c.off = c.buf[:0], 0
		return 0, err
	}
	c.drained.Store(n < readBuffer)
	c.buf, c.off, c.err = c.buf[:n], copy(p, c.buf[:n]), err
	if c.off == n {
		c.err = nil
		return n, err
	}
	return c.off, nil
}

// Drained reports whether the last read from the network emptied the
// socket: nothing more had arrived by then. The reader lets messages
// gather only then; while the socket still holds data (a backlog, a bulk
// drain) it reads on at once.
func (s *Session) Drained() bool {
	return s.sock == nil || s.sock.drained.Load()
}

// gatherBytes is how much Gather lets arrive before it returns early. It
// is below half of Linux's default TCP receive buffer (tcp_rmem, 128 KiB),
// so that the kernel neither caps it nor grows the buffer for it.
const gatherBytes = 32 << 10

// Gather waits, without reading, until the socket holds gatherBytes or
// wait has passed, whichever is first; ctx ending cuts it short.
//
// A plain sleep lets messages gather too, but not cheaply: the socket stays
// registered with the runtime's network poller, edge-triggered, so every
// segment the walsender sends during the sleep wakes the poller's thread
// (an epoll wake-up and a context switch each) only to find that no
// goroutine waits for it. At 13,000 single-row transactions a second that
// was 9,000 wake-ups a second for 250 intended ones. On a TCP socket
// Gather raises SO_RCVLOWAT for the wait instead, so the kernel wakes
// nobody until there is enough to read or the deadline passes. Other
// sockets (Unix-domain ones ignore SO_RCVLOWAT in poll) and other systems
// sleep.
func (s *Session) Gather(ctx context.Context, wait time.Duration) error {
	var c *meteredConn
	if s.sock != nil {
		c = s.sock.conn.Load()
	}
	if c != nil && c.raw != nil && !c.gatherOff && lowWaterMarks {
		if err := s.arm(ctx, time.Now().Add(wait)); err != nil {
			return err
		}
		err := awaitBytes(c.raw, gatherBytes)
		if ctx.Err() != nil {
			return fmt.Errorf("receiving from the replication stream: %w", context.Cause(ctx))
		}
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		// The socket refused the mark, or broke: sleep from now on (a
		// broken connection is reported by the read that follows).
		c.gatherOff = true
	}
	if backoff.Sleep(ctx, wait) != nil {
		return fmt.Errorf("receiving from the replication stream: %w", context.Cause(ctx))
	}
	return nil
}

// Start begins streaming from the slot's confirmed position with logical
// messages and pgoutput protocol version 1: whole committed transactions,
// in commit order. With streaming set (see CanStream), it asks for
// protocol 2 with streaming on instead: a transaction that outgrows
// logical_decoding_work_mem comes in blocks while in progress (package
// spool keeps them until its commit), rather than being written to the
// server's disk and read back at COMMIT.
func (s *Session) Start(ctx context.Context, slot, publication string, streaming bool) error {
	// An identifier list inside a literal: double quotes keep the name as
	// it is, then the literal's quotes are doubled.
	names := strings.ReplaceAll(ident.SQL(publication), `'`, `''`)
	args := []string{"proto_version '1'", "publication_names '" + names + "'", "messages 'true'"}
	if streaming {
		args[0] = "proto_version '2'"
		args = append(args, "streaming 'on'")
	}
	err := pglogrepl.StartReplication(ctx, s.conn, slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		if isCode(err, pgerrcode.ObjectInUse) {
			return fmt.Errorf("starting replication from slot %q: %w: %w", slot, ErrSlotInUse, err)
		}
		if isCode(err, pgerrcode.UndefinedObject) {
			return fmt.Errorf("starting replication: slot %q or publication %q does not exist: run `pgaudit-cdc watch` first: %w", slot, publication, err)
		}
		return Explain(fmt.Errorf("starting replication from slot %q: %w", slot, err))
	}
	return nil
}

// CanStream reports whether the server streams in-progress transactions
// (PostgreSQL 14+, pgoutput protocol 2).
func (s *Session) CanStream() bool {
	return serverMajor(s.conn.ParameterStatus("server_version")) >= 14
}

// serverMajor returns the major version of a server_version setting
// ("15.4 (Debian 15.4-1)", "17beta1"), or 0 when it has none.
func serverMajor(version string) int {
	major := 0
	for _, c := range version {
		if c < '0' || c > '9' {
			break
		}
		major = major*10 + int(c-'0')
		if major > 1e6 {
			return 0
		}
	}
	return major
}

// Received is one thing read from the stream: XLogData (Data set) or a
// keepalive.
type Received struct {
	WALStart pgoutput.LSN
	Data     []byte // a pgoutput message; valid until the next Receive or Poll
	// Region is where Data is mapped when the message was set aside as it
	// arrived (over DivertOver); nil otherwise. Its Release hands back
	// pages of Data already used.
	Region         *mapped.Region
	Keepalive      bool
	ServerWALEnd   pgoutput.LSN
	ReplyRequested bool
	// Notice is a notice the server sent (severity: message); nothing else
	// is set then.
	Notice string
}

// Receive waits until deadline for the next message. It returns ok=false when
// the deadline passed first, which is not an error.
//
// pgconn watches a context for every ReceiveMessage call (a registration and
// its removal per message, which showed in the profile at 10,000
// transactions a second). Instead the deadline is set on the connection only
// when it changes, and ctx interrupts a read through one registration per
// context, which moves the deadline into the past. pgconn treats a read
// timeout as resumable: a partly read message is kept for the next call.
func (s *Session) Receive(ctx context.Context, deadline time.Time) (Received, bool, error) {
	return s.receive(ctx, deadline)
}

// Poll returns the next message only if it is already buffered: it never
// reads from the network. The reader uses it to hand over work when the
// stream is drained rather than after every transaction.
func (s *Session) Poll(ctx context.Context) (Received, bool, error) {
	return s.receive(ctx, pollDeadline)
}

// pollDeadline is a deadline long past: a read finds it expired before it
// makes any system call.
var pollDeadline = time.Unix(1, 0)

func (s *Session) receive(ctx context.Context, deadline time.Time) (Received, bool, error) {
	if s.region != nil {
		s.region.Close()
		s.region = nil
	}
	if err := s.arm(ctx, deadline); err != nil {
		return Received{}, false, err
	}
	msg, err := s.conn.ReceiveMessage(context.Background())
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return Received{}, false, fmt.Errorf("receiving from the replication stream: %w", cerr)
		}
		if pgconn.Timeout(err) {
			return Received{}, false, nil
		}
		return Received{}, false, Explain(fmt.Errorf("receiving from the replication stream: %w", err))
	}
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return Received{}, false, fmt.Errorf("receiving from the replication stream: empty CopyData message")
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return Received{}, false, fmt.Errorf("parsing a keepalive: %w", err)
			}
			return Received{Keepalive: true, ServerWALEnd: pgoutput.LSN(ka.ServerWALEnd), ReplyRequested: ka.ReplyRequested}, true, nil
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return Received{}, false, fmt.Errorf("parsing XLogData: %w", err)
			}
			rec := Received{WALStart: pgoutput.LSN(x.WALStart), Data: x.WALData, ServerWALEnd: pgoutput.LSN(x.ServerWALEnd)}
			if s.div != nil {
				r, ok, err := s.div.take(x.WALData)
				if err != nil {
					return Received{}, false, err
				}
				if ok {
					s.region, rec.Region, rec.Data = r, r, r.Bytes()
				}
			}
			return rec, true, nil
		default:
			return Received{}, false, fmt.Errorf("receiving from the replication stream: unknown CopyData type %q", m.Data[0])
		}
	case *pgproto3.ErrorResponse:
		return Received{}, false, Explain(fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m)))
	case *pgproto3.CopyDone:
		return Received{}, false, fmt.Errorf("replication stream ended by the server")
	case *pgproto3.NoticeResponse:
		// The server tells something without ending the stream (PostgreSQL
		// 17+ warns, for example, when a slot named in
		// synchronized_standby_slots has no active walsender).
		return Received{Notice: m.Severity + ": " + m.Message}, true, nil
	case *pgproto3.ParameterStatus:
		return Received{}, false, nil
	default:
		return Received{}, false, fmt.Errorf("replication stream: unexpected message %T", msg)
	}
}

// SendStatus reports position as written, flushed and applied. Every position
// is set explicitly: pglogrepl would otherwise copy the write position into a
// zero flush position, confirming what was never delivered.
func (s *Session) SendStatus(ctx context.Context, position pgoutput.LSN, replyRequested bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(position),
		WALFlushPosition: pglogrepl.LSN(position),
		WALApplyPosition: pglogrepl.LSN(position),
		ClientTime:       time.Now(),
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("sending standby status update: %w", err)
	}
	return nil
}

// arm makes the next read end at deadline, or at once when ctx ended.
func (s *Session) arm(ctx context.Context, deadline time.Time) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if ctx != s.rparent {
		if s.rstop != nil {
			s.rstop()
		}
		// A new context: apply the deadline again, whatever the last
		// one was (the previous context's end moved it).
		s.rparent, s.rdone, s.rdeadline = ctx, false, time.Time{}
		s.rstop = context.AfterFunc(ctx, func() {
			s.rmu.Lock()
			defer s.rmu.Unlock()
			if s.rparent == ctx {
				s.rdone = true
				_ = s.conn.Conn().SetReadDeadline(pollDeadline)
				s.rdeadline = pollDeadline
			}
		})
	}
	if s.rdone {
		return fmt.Errorf("receiving from the replication stream: %w", context.Cause(ctx))
	}
	if deadline.IsZero() {
		// "No deadline" on a connection; a deadline that has passed to
		// the caller.
		deadline = pollDeadline
	}
	if !deadline.Equal(s.rdeadline) {
		if err := s.conn.Conn().SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("receiving from the replication stream: %w", err)
		}
		s.rdeadline = deadline
	}
	return nil
}

// Close closes the connection.
func (s *Session) Close(ctx context.Context) error {
	s.rmu.Lock()
	if s.rstop != nil {
		s.rstop()
		s.rstop = nil
	}
	s.rmu.Unlock()
	err := s.conn.Close(ctx)
	if s.region != nil {
		s.region.Close()
		s.region = nil
	}
	if s.div != nil {
		s.div.close()
	}
	return err
}

// Explain adds the fix to errors a user can cause, keeping the original
// reachable with errors.As.
func Explain(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == pgerrcode.InsufficientPrivilege && strings.Contains(pgErr.Message, "replication"):
			return fmt.Errorf("%w: the role needs the REPLICATION attribute: run ALTER ROLE <role> REPLICATION as a superuser (on Amazon RDS: GRANT rds_replication TO <role>; on Cloud SQL: ALTER USER <role> WITH REPLICATION)", err)
		case pgErr.Code == pgerrcode.InvalidAuthorizationSpecification || pgErr.Code == pgerrcode.InvalidPassword:
			return fmt.Errorf("%w: check the user and password in --database-url, and that pg_hba.conf has a line allowing `replication` connections for it (`host replication <role> <addr> scram-sha-256` is not needed for database-level logical replication, but a matching `host <db> <role>` line is)", err)
		case pgErr.Code == pgerrcode.TooManyConnections:
			return fmt.Errorf("%w: raise max_wal_senders (and max_connections) or free a connection", err)
		case pgErr.Code == pgerrcode.ObjectNotInPrerequisiteState && strings.Contains(pgErr.Message, "wal_level"):
			return fmt.Errorf("%w: set wal_level = logical and restart PostgreSQL", err)
		}
	}
	return err
}

// Identify returns the server's system identifier and timeline
// (IDENTIFY_SYSTEM on a short-lived replication connection). Only the
// replication protocol tells the timeline of a running primary reliably.
func Identify(ctx context.Context, dsn string) (systemID string, timeline int32, err error) {
	s, err := Connect(ctx, dsn, Divert{})
	if err != nil {
		return "", 0, err
	}
	defer s.Close(context.WithoutCancel(ctx))
	return s.SystemID, s.Timeline, nil
}
