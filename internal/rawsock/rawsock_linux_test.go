package rawsock

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// pair returns both ends of a connection over network ("tcp" or "unix"),
// the second wrapped.
func pair(t *testing.T, network string) (peer net.Conn, wrapped net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	peer, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { peer.Close(); s.Close() })
	wrapped = Wrap(s)
	if _, ok := wrapped.(*conn); !ok {
		t.Fatalf("Wrap(%T) did not wrap it", s)
	}
	return peer, wrapped
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

// copyInPieces writes src to w in pieces of random sizes up to max.
func copyInPieces(w io.Writer, src []byte, max int, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 1))
	for len(src) > 0 {
		n := min(len(src), 1+r.IntN(max))
		m, err := w.Write(src[:n])
		if err != nil {
			return err
		}
		if m != n {
			return io.ErrShortWrite
		}
		src = src[n:]
	}
	return nil
}

// readInPieces reads r to its end with buffers of random sizes up to max.
func readInPieces(r io.Reader, max int, seed uint64) ([]byte, error) {
	rnd := rand.New(rand.NewPCG(seed, 2))
	var got bytes.Buffer
	for {
		p := make([]byte, 1+rnd.IntN(max))
		n, err := r.Read(p)
		got.Write(p[:n])
		if err == io.EOF {
			return got.Bytes(), nil
		}
		if err != nil {
			return got.Bytes(), err
		}
		if n == 0 {
			return got.Bytes(), errors.New("a read returned nothing and no error")
		}
	}
}

// TestConnCarriesBothWays: what one side writes, in pieces of any size
// (above MaxPiece too), the other reads exactly, both ways, and the end
// of the stream is io.EOF.
func TestConnCarriesBothWays(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			peer, c := pair(t, network)
			in, out := randomBytes(1, 5<<20), randomBytes(2, 5<<20)
			errs := make(chan error, 2)
			go func() {
				err := copyInPieces(peer, in, 3*MaxPiece, 3)
				if err == nil {
					err = closeWrite(peer)
				}
				errs <- err
			}()
			go func() {
				err := copyInPieces(c, out, 3*MaxPiece, 4)
				if err == nil {
					err = closeWrite(c.(*conn).Conn)
				}
				errs <- err
			}()
			var fromPeer []byte
			readErr := make(chan error, 1)
			go func() {
				var err error
				fromPeer, err = readInPieces(peer, 3*MaxPiece, 5)
				readErr <- err
			}()
			got, err := readInPieces(c, 3*MaxPiece, 6)
			if err != nil {
				t.Fatalf("reading through the wrapped conn: %v", err)
			}
			if !bytes.Equal(got, in) {
				t.Errorf("read %d bytes that differ from the %d sent", len(got), len(in))
			}
			if err := <-readErr; err != nil {
				t.Fatalf("the peer reading: %v", err)
			}
			if !bytes.Equal(fromPeer, out) {
				t.Errorf("the peer read %d bytes that differ from the %d written", len(fromPeer), len(out))
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatalf("writing: %v", err)
				}
			}
		})
	}
}

func closeWrite(c net.Conn) error {
	return c.(interface{ CloseWrite() error }).CloseWrite()
}

// TestConnDeadlines: a read or a write past its deadline fails with a
// timeout that is a *net.OpError, as net.Conn's; the connection goes on
// afterwards, and a write cut off by its deadline reports exactly what it
// wrote.
func TestConnDeadlines(t *testing.T) {
	peer, c := pair(t, "tcp")
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	p := make([]byte, 100)
	n, err := c.Read(p)
	checkTimeout(t, "read", n, err)
	c.SetReadDeadline(time.Time{})
	peer.Write([]byte("after"))
	if n, err := c.Read(p); err != nil || string(p[:n]) != "after" {
		t.Fatalf("read after the timeout: %q, %v", p[:n], err)
	}

	// Nobody reads: the write fills the socket and stops at the deadline.
	big := randomBytes(7, 16<<20)
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err = c.Write(big)
	if n == 0 || n == len(big) {
		t.Fatalf("the blocked write wrote %d of %d bytes, want some", n, len(big))
	}
	checkTimeout(t, "write", 0, err)
	c.SetWriteDeadline(time.Time{})
	c.(*conn).Conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big[:n]) {
		t.Fatalf("the peer read %d bytes, the write said %d were written (or they differ)", len(got), n)
	}
}

func checkTimeout(t *testing.T, op string, n int, err error) {
	t.Helper()
	var oe *net.OpError
	if n != 0 || !errors.As(err, &oe) || oe.Op != op || !oe.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s past the deadline: %d, %T %v; want a timeout *net.OpError %q", op, n, err, err, op)
	}
}

// TestConnErrors: a reset, a write to a closed peer and a close during a
// read reach the caller as net.Conn's would; empty reads and writes return
// at once.
func TestConnErrors(t *testing.T) {
	peer, c := pair(t, "tcp")
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	if n, err := c.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty write: %d, %v", n, err)
	}
	// Unread data at close makes the closing side send a reset.
	c.Write([]byte("unread"))
	time.Sleep(20 * time.Millisecond)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	var err error
	p := make([]byte, 100)
	for end := time.Now().Add(10 * time.Second); err == nil && time.Now().Before(end); {
		_, err = c.Read(p)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after a reset: %T %v; want a *net.OpError wrapping ECONNRESET", err, err)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		if _, err = c.Write([]byte("x")); err != nil {
			break
		}
	}
	if !errors.As(err, &oe) || oe.Op != "write" || !(errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("write to a reset connection: %T %v; want a *net.OpError wrapping EPIPE or ECONNRESET", err, err)
	}

	_, c = pair(t, "tcp")
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(p)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read during a close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a read still waits 10 s after its connection was closed")
	}
}

// TestWrapLeavesOtherConnections: a connection without a socket of its own
// is returned as it is.
func TestWrapLeavesOtherConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("Wrap changed a net.Pipe connection")
	}
}

// TestFile: what File writes arrives exactly and in order: through a pipe
// that a slow reader keeps filling up (the kernel then refuses to take
// the bytes without waiting, and the ordinary write waits), into a regular
// file, and into /dev/null.
func TestFile(t *testing.T) {
	t.Run("pipe with a slow reader", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		sent := randomBytes(8, 8<<20)
		got := make(chan []byte, 1)
		go func() {
			var b bytes.Buffer
			p := make([]byte, 16<<10)
			for {
				n, err := r.Read(p)
				b.Write(p[:n])
				if err != nil {
					got <- b.Bytes()
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
		f := NewFile(w)
		if err := copyInPieces(f, sent, 2*MaxPiece, 9); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if b := <-got; !bytes.Equal(b, sent) {
			t.Fatalf("the pipe carried %d bytes that differ from the %d written", len(b), len(sent))
		}
		raw, plain := f.rawBytes.Load(), f.plainBytes.Load()
		if raw+plain != int64(len(sent)) {
			t.Fatalf("%d bytes written raw and %d ordinarily, want %d in all", raw, plain, len(sent))
		}
		if takesNoWait(t, "pipe") {
			// The reader is slower than the writer: the pipe fills up,
			// the kernel refuses, and the ordinary write waits.
			if raw == 0 || plain == 0 {
				t.Fatalf("%d bytes written raw and %d ordinarily, want both ways through a pipe that fills up", raw, plain)
			}
		} else if raw != 0 || !f.refused.Load() {
			t.Fatalf("this kernel refuses RWF_NOWAIT on pipes, yet %d bytes were written raw", raw)
		}
	})
	t.Run("regular file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "events")
		fh, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		sent := randomBytes(10, 3<<20)
		if err := copyInPieces(NewFile(fh), sent, 2*MaxPiece, 11); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, sent) {
			t.Fatalf("the file holds %d bytes that differ from the %d written (%v)", len(b), len(sent), err)
		}
	})
	t.Run("/dev/null", func(t *testing.T) {
		null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer null.Close()
		f := NewFile(null)
		if n, err := f.Write(randomBytes(12, 1<<20)); n != 1<<20 || err != nil {
			t.Fatalf("write to /dev/null: %d, %v", n, err)
		}
		if want := int64(0); takesNoWait(t, os.DevNull) {
			if want = 1 << 20; f.rawBytes.Load() != want {
				t.Fatalf("%d bytes written raw to /dev/null, want %d", f.rawBytes.Load(), want)
			}
		}
	})
	t.Run("closed file", func(t *testing.T) {
		_, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		f := NewFile(w)
		w.Close()
		if _, err := f.Write([]byte("x")); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("write to a closed file: %v, want os.ErrClosed", err)
		}
	})
}

// takesNoWait reports whether this kernel takes a RWF_NOWAIT write on a
// fresh pipe ("pipe") or on the file at path: pipes take it from Linux
// 6.4 or so.
func takesNoWait(t *testing.T, what string) bool {
	t.Helper()
	var f *os.File
	if what == "pipe" {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		f = w
	} else {
		var err error
		if f, err = os.OpenFile(what, os.O_WRONLY, 0); err != nil {
			t.Fatal(err)
		}
	}
	defer f.Close()
	fd := f.Fd()
	_, errno := nowait(fd, []byte("x"))
	return errno == 0
}

// TestConnHandsOverForTheRaceDetector: what a goroutine did before its
// peer wrote to a socket happened before what the reader does after the
// raw read, for the race detector too (under -race it reports this test
// otherwise).
func TestConnHandsOverForTheRaceDetector(t *testing.T) {
	peer, c := pair(t, "tcp")
	var shared int
	go func() {
		shared = 42
		peer.Write([]byte("x"))
		peer.Close()
	}()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "x" {
		t.Fatalf("read %q, %v", got, err)
	}
	if shared != 42 {
		t.Fatalf("shared = %d after the read, want 42", shared)
	}
	// And the other way: the wrapped side writes.
	peer2, c2 := pair(t, "tcp")
	done := make(chan struct{})
	var back int
	go func() {
		defer close(done)
		p := make([]byte, 1)
		if _, err := peer2.Read(p); err == nil && back != 7 {
			t.Errorf("back = %d after the read, want 7", back)
		}
	}()
	back = 7
	c2.Write([]byte("y"))
	<-done
}

// TestSocketOptions: SetInt sets an option and Queued counts the bytes
// waiting, both on the socket's descriptor.
func TestSocketOptions(t *testing.T) {
	peer, c := pair(t, "tcp")
	raw := c.(*conn).raw
	peer.Write(make([]byte, 1000))
	var queued int
	var err error
	for end := time.Now().Add(10 * time.Second); queued < 1000 && time.Now().Before(end); {
		raw.Control(func(fd uintptr) { queued, err = Queued(fd) })
		if err != nil {
			t.Fatal(err)
		}
	}
	if queued != 1000 {
		t.Fatalf("Queued = %d, want 1000", queued)
	}
	var got int
	raw.Control(func(fd uintptr) {
		if err = SetInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, 4096); err == nil {
			got, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT)
		}
	})
	if err != nil || got != 4096 {
		t.Fatalf("SO_RCVLOWAT after SetInt(4096) = %d, %v", got, err)
	}
}

// TestWrapDial: a dial's connections come wrapped, and its errors as they
// are.
func TestWrapDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := WrapDial((&net.Dialer{}).DialContext)
	c, err := dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*conn); !ok {
		t.Fatalf("WrapDial's connection is a %T, not wrapped", c)
	}
	ln.Close()
	if c, err := dial(context.Background(), "tcp", ln.Addr().String()); err == nil || c != nil {
		t.Fatalf("dialling a closed listener: %v, %v; want the dial's error and no connection", c, err)
	}
}
