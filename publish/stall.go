package publish

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// stallTimer cancels a request when nothing arrived for its timeout: while
// it waits for the answer to start, and while a read of its body waits for
// the next bytes. Time the caller spends between reads does not count. An
// answer that keeps coming is read whole, however long it takes.
type stallTimer struct {
	d         time.Duration
	t         *time.Timer
	stalled   atomic.Bool
	uploading atomic.Bool // a request body is being sent (upload)
	cancel    context.CancelFunc
}

// withStallTimeout returns ctx, cancelled once nothing arrived for d.
func withStallTimeout(ctx context.Context, d time.Duration) (context.Context, *stallTimer) {
	ctx, cancel := context.WithCancel(ctx)
	s := &stallTimer{d: d, cancel: cancel}
	s.t = time.AfterFunc(d, func() {
		s.stalled.Store(true)
		cancel()
	})
	return ctx, s
}

func (s *stallTimer) stop() {
	s.t.Stop()
	s.cancel()
}

// watch returns body, each read of which is timed on its own: the answer
// has started.
func (s *stallTimer) watch(body io.ReadCloser) io.ReadCloser {
	s.t.Stop()
	s.uploading.Store(false)
	return &stallReader{ReadCloser: body, s: s}
}

// explain names the stall as the cause of err, when it was.
func (s *stallTimer) explain(err error) error {
	if err != nil && s.stalled.Load() {
		if s.uploading.Load() {
			return fmt.Errorf("the spine took nothing of the request for %s (--spine-timeout): %w", s.d, err)
		}
		return fmt.Errorf("the spine sent nothing for %s (--spine-timeout): %w", s.d, err)
	}
	return err
}

// upload returns body as a request body that keeps the timer going while
// it is sent: each read of it, the transport asking for the next piece,
// restarts the timer, which runs on while that piece is written. An upload
// that keeps moving is not cut off by its size; one that stops is, after
// the timeout, and so is the wait for the answer after its last piece.
func (s *stallTimer) upload(body []byte) io.ReadCloser {
	return &uploadReader{r: bytes.NewReader(body), s: s}
}

type uploadReader struct {
	r *bytes.Reader
	s *stallTimer
}

func (u *uploadReader) Read(p []byte) (int, error) {
	if !u.s.stalled.Load() {
		u.s.t.Reset(u.s.d)
	}
	n, err := u.r.Read(p)
	// Once the body is out, what is left is the wait for the answer.
	u.s.uploading.Store(err != io.EOF)
	return n, err
}

func (u *uploadReader) Close() error { return nil }

type stallReader struct {
	io.ReadCloser
	s *stallTimer
}

func (r *stallReader) Read(p []byte) (int, error) {
	if !r.s.stalled.Load() {
		r.s.t.Reset(r.s.d)
	}
	n, err := r.ReadCloser.Read(p)
	r.s.t.Stop()
	return n, err
}

// writePiece is the most a pipelined connection writes under one deadline.
const writePiece = 256 << 10

// stallConn is the pipelined connection: every read, and every write of up
// to writePiece bytes, gets --spine-timeout of its own. A request then fails
// when the link made no progress for that long, not when a large body (a
// 200 MiB row) takes longer than that in all to cross a slow link: such a
// request was given up on and sent again forever.
//
// stop moves both deadlines into the past for good, so that blocked reads
// and writes return: a deadline set for the next piece must not undo it.
type stallConn struct {
	net.Conn
	timeout time.Duration
	stopped atomic.Bool
}

func (c *stallConn) Read(p []byte) (int, error) {
	if err := c.arm(c.Conn.SetReadDeadline); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *stallConn) Write(p []byte) (n int, err error) {
	for len(p) > 0 {
		if err := c.arm(c.Conn.SetWriteDeadline); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(p[:min(len(p), writePiece)])
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// arm gives the next read or write its deadline, unless stop came first.
func (c *stallConn) arm(set func(time.Time) error) error {
	if c.stopped.Load() {
		return os.ErrDeadlineExceeded
	}
	if err := set(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	if c.stopped.Load() {
		// stop ran between the check and the deadline: put it back.
		_ = set(time.Now())
	}
	return nil
}

// stop makes every blocked and later read and write return at once.
func (c *stallConn) stop() {
	c.stopped.Store(true)
	_ = c.Conn.SetDeadline(time.Now())
}
