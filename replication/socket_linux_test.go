package replication

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
)

// tcpPair returns both ends of a loopback TCP connection, the second with
// its RawConn.
func tcpPair(t *testing.T) (client net.Conn, server *net.TCPConn, raw syscall.RawConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); s.Close() })
	server = s.(*net.TCPConn)
	raw, err = server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return client, server, raw
}

// queued is what the socket holds, unread.
func queued(t *testing.T, raw syscall.RawConn) int {
	t.Helper()
	var avail int32
	if err := raw.Control(func(fd uintptr) {
		syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&avail)))
	}); err != nil {
		t.Fatal(err)
	}
	return int(avail)
}

// waitQueued waits until the socket holds at least n bytes.
func waitQueued(t *testing.T, raw syscall.RawConn, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); queued(t, raw) < n; {
		if time.Now().After(end) {
			t.Fatalf("the socket holds %d bytes, not %d, after 10 s", queued(t, raw), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func lowWaterMark(t *testing.T, raw syscall.RawConn) int {
	t.Helper()
	var v int
	var err error
	raw.Control(func(fd uintptr) { v, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT) })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMeteredConnCarriesTheStream: whatever the sizes of the writes and of
// the reads asked for (below, at and above readBuffer), meteredConn hands
// on exactly the bytes sent, through the raw read and through net.Conn.
func TestMeteredConnCarriesTheStream(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  bool
	}{{"raw system call", true}, {"net.Conn", false}} {
		t.Run(tc.name, func(t *testing.T) {
			client, server, _ := tcpPair(t)
			m := &meteredConn{Conn: server, drained: new(atomic.Bool)}
			if tc.raw {
				m.Conn = rawsock.Wrap(server)
			}
			r := rand.New(rand.NewPCG(3, 4))
			sent := make([]byte, 3<<20)
			for i := range sent {
				sent[i] = byte(r.Uint32())
			}
			go func() {
				for rest := sent; len(rest) > 0; {
					n := min(len(rest), 1+r.IntN(100<<10))
					if _, err := client.Write(rest[:n]); err != nil {
						return
					}
					rest = rest[n:]
				}
				client.(*net.TCPConn).CloseWrite()
			}()
			var got bytes.Buffer
			sizes := []int{1, 5, 8 << 10, readBuffer - 1, readBuffer, readBuffer + 1, 1 << 20}
			for k := 0; ; k++ {
				p := make([]byte, sizes[k%len(sizes)])
				n, err := m.Read(p)
				got.Write(p[:n])
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("read %d: %v", k, err)
				}
				if n == 0 {
					t.Fatalf("read %d returned nothing and no error", k)
				}
			}
			if !bytes.Equal(got.Bytes(), sent) {
				t.Fatalf("received %d bytes that differ from the %d sent", got.Len(), len(sent))
			}
		})
	}
}

// TestMeteredConnDrainedAndDeadline: a read that empties the socket says
// so, and a read past its deadline returns a timeout, resumably, without
// losing what arrives afterwards.
func TestMeteredConnDrainedAndDeadline(t *testing.T) {
	client, server, raw := tcpPair(t)
	m := &meteredConn{Conn: rawsock.Wrap(server), drained: new(atomic.Bool), raw: raw}
	client.Write([]byte("hello"))
	p := make([]byte, 8<<10)
	n, err := m.Read(p)
	if err != nil || string(p[:n]) != "hello" {
		t.Fatalf("read %q, %v", p[:n], err)
	}
	if !m.drained.Load() {
		t.Error("a read that took all the socket held is not marked drained")
	}
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	n, err = m.Read(p)
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %d bytes, %v; want a timeout", n, err)
	}
	server.SetReadDeadline(time.Time{})
	client.Write([]byte("world"))
	n, err = m.Read(p)
	if err != nil || string(p[:n]) != "world" {
		t.Fatalf("read after the timeout %q, %v", p[:n], err)
	}
}

// TestAwaitBytes: the wait ends when gatherBytes are there (already, or
// arriving during it), or at the read deadline, including a deadline moved
// into the past by another goroutine (a context ending); it reads nothing,
// and leaves the low-water mark at 1 for the reads that follow.
func TestAwaitBytes(t *testing.T) {
	const n = gatherBytes
	t.Run("below the mark until the deadline", func(t *testing.T) {
		client, server, raw := tcpPair(t)
		client.Write(make([]byte, 100))
		waitQueued(t, raw, 100)
		server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if err := awaitBytes(raw, n); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("awaitBytes with 100 of %d bytes: %v, want the deadline", n, err)
		}
		if got := lowWaterMark(t, raw); got != 1 {
			t.Errorf("SO_RCVLOWAT after the wait = %d, want 1", got)
		}
	})
	t.Run("already there", func(t *testing.T) {
		client, server, raw := tcpPair(t)
		client.Write(make([]byte, n))
		waitQueued(t, raw, n)
		server.SetReadDeadline(time.Now().Add(time.Minute))
		if err := awaitBytes(raw, n); err != nil {
			t.Fatalf("awaitBytes with %d bytes queued: %v", n, err)
		}
		if got := queued(t, raw); got != n {
			t.Errorf("awaitBytes read: the socket holds %d bytes, want %d", got, n)
		}
	})
	t.Run("arriving during the wait", func(t *testing.T) {
		client, server, raw := tcpPair(t)
		go func() {
			for range n / 1000 {
				client.Write(make([]byte, 1000))
				time.Sleep(100 * time.Microsecond)
			}
			client.Write(make([]byte, n%1000+1))
		}()
		server.SetReadDeadline(time.Now().Add(time.Minute))
		if err := awaitBytes(raw, n); err != nil {
			t.Fatalf("awaitBytes: %v", err)
		}
		if got := queued(t, raw); got < n {
			t.Errorf("awaitBytes returned with %d bytes queued, want at least %d", got, n)
		}
		if got := lowWaterMark(t, raw); got != 1 {
			t.Errorf("SO_RCVLOWAT after the wait = %d, want 1", got)
		}
	})
	t.Run("deadline moved into the past", func(t *testing.T) {
		_, server, raw := tcpPair(t)
		server.SetReadDeadline(time.Now().Add(time.Minute))
		done := make(chan error, 1)
		go func() { done <- awaitBytes(raw, n) }()
		time.Sleep(20 * time.Millisecond)
		server.SetReadDeadline(pollDeadline)
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("awaitBytes: %v, want the deadline", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("awaitBytes still waits 10 s after its deadline moved into the past")
		}
	})
}
