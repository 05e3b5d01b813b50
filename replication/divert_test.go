package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
)

// timeoutErr is a read deadline passing, as a net.Conn reports it.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// choppy reads b in pieces of the sizes plan gives, a timeout before some.
type choppy struct {
	b    []byte
	plan *rand.Rand
}

func (c *choppy) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	if c.plan.IntN(5) == 0 {
		return 0, timeoutErr{}
	}
	n := min(len(p), len(c.b), 1+c.plan.IntN(64))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// message is one backend message as sent.
func message(typ byte, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{typ}, uint32(len(body)+4)), body...)
}

// xlog is a CopyData of XLogData carrying data at WAL position at.
func xlog(at uint64, data []byte) []byte {
	body := []byte{'w'}
	body = binary.BigEndian.AppendUint64(body, at)
	body = binary.BigEndian.AppendUint64(body, at+1)
	body = binary.BigEndian.AppendUint64(body, 42)
	return message('d', append(body, data...))
}

func payload(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

// stream is a random sequence of backend messages, some over over: XLogData
// (to be set aside), a large CopyData that is no XLogData (to pass),
// keepalives, and with others messages of other kinds, large ones too.
func stream(r *rand.Rand, over int, others bool) (sent []byte, want [][]byte) {
	kinds := 5
	if others {
		kinds = 6
	}
	for i := range 40 {
		var m []byte
		switch r.IntN(kinds) {
		case 0, 1:
			m = xlog(uint64(i), payload(r, over+1+r.IntN(3*over)))
		case 2:
			m = xlog(uint64(i), payload(r, r.IntN(over-xlogHeader)))
		case 3:
			m = message('d', append([]byte{'k'}, payload(r, 17)...))
		case 4:
			m = message('d', append([]byte{'?'}, payload(r, over+r.IntN(over))...))
		default:
			m = message("DCZN"[r.IntN(4)], payload(r, r.IntN(3*over)))
		}
		sent = append(sent, m...)
		want = append(want, m)
	}
	return sent, want
}

// readThrough reads d to its first error other than a timeout, asking
// each time for as many bytes as size says, and returns what it read and
// that error.
func readThrough(d *diverter, size func() int) ([]byte, error) {
	var out []byte
	for {
		p := make([]byte, size())
		n, err := d.Read(p)
		out = append(out, p[:n]...)
		var te timeoutErr
		if err != nil && !errors.As(err, &te) {
			return out, err
		}
	}
}

// setAside reports whether the diverter sets m aside.
func setAside(m []byte, over int) bool {
	return m[0] == 'd' && len(m) > msgHeader+over && m[msgHeader] == 'w'
}

// checkMessage checks that got, read through the diverter, is w as sent:
// the same bytes, or a stand-in whose message set aside is w's.
func checkMessage(t *testing.T, d *diverter, got, w []byte, over int) {
	t.Helper()
	if !setAside(w, over) {
		if !bytes.Equal(got, w) {
			t.Fatalf("got type %q length %d, want type %q length %d", got[0], len(got), w[0], len(w))
		}
		return
	}
	region, ok, err := d.take(got[msgHeader+xlogHeader:])
	if err != nil || !ok {
		t.Fatalf("no stand-in for a large XLogData (%v)", err)
	}
	defer region.Close()
	if !bytes.Equal(got[msgHeader:msgHeader+xlogHeader], w[msgHeader:msgHeader+xlogHeader]) || !bytes.Equal(region.Bytes(), w[msgHeader+xlogHeader:]) {
		t.Fatal("the message set aside differs from the one sent")
	}
}

// TestDiverterSetsAsideOnlyLargeXLogData: every message reads as sent, in
// order, whatever the pieces the connection gives, the timeouts between
// them and the sizes the reader asks for; XLogData over the limit arrives
// as a stand-in whose mapped message is the one sent, and nothing else
// does.
func TestDiverterSetsAsideOnlyLargeXLogData(t *testing.T) {
	const over = 300
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 7))
		sent, want := stream(r, over, true)
		quota := mapped.NewQuota(1 << 30)
		d := newDiverter(&choppy{b: sent, plan: rand.New(rand.NewPCG(seed, 8))}, Divert{Dir: t.TempDir(), Quota: quota}, over)
		out, err := readThrough(d, func() int { return 1 + r.IntN(200) })
		if err != io.EOF {
			t.Fatalf("seed %d: %v", seed, err)
		}
		asides := 0
		for i, w := range want {
			if len(out) < msgHeader {
				t.Fatalf("seed %d: the stream ends before message %d", seed, i)
			}
			n := msgHeader - 4 + int(binary.BigEndian.Uint32(out[1:]))
			if setAside(w, over) {
				asides++
			}
			checkMessage(t, d, out[:n], w, over)
			out = out[n:]
		}
		if len(out) != 0 || asides == 0 || len(d.ready) != 0 {
			t.Fatalf("seed %d: %d bytes past the last message; %d messages set aside, %d never taken", seed, len(out), asides, len(d.ready))
		}
		if quota.Used() != 0 {
			t.Fatalf("seed %d: %d bytes still counted against the quota once every message set aside was unmapped", seed, quota.Used())
		}
	}
}

// TestDiverterUnderPgproto3: pgproto3, as pgconn builds it over the
// diverter, reads each message as sent, resuming after timeouts.
func TestDiverterUnderPgproto3(t *testing.T) {
	const over = 300
	for seed := range uint64(10) {
		r := rand.New(rand.NewPCG(seed, 9))
		sent, want := stream(r, over, false)
		d := newDiverter(&choppy{b: sent, plan: rand.New(rand.NewPCG(seed, 10))}, Divert{Dir: t.TempDir()}, over)
		f := pgproto3.NewFrontend(d, io.Discard)
		for _, w := range want {
			var msg pgproto3.BackendMessage
			var err error
			for {
				msg, err = f.Receive()
				var te timeoutErr
				if !errors.As(err, &te) {
					break
				}
			}
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			checkMessage(t, d, message('d', msg.(*pgproto3.CopyData).Data), w, over)
		}
	}
}

// TestDiverterFullDirectory: a message that cannot be set aside ends the
// stream with a sentence naming the directory and the fix.
func TestDiverterFullDirectory(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 1))
	sent := xlog(1, payload(r, 4096))
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	if f, err := os.CreateTemp(dir, "probe"); err == nil {
		f.Close()
		os.Remove(f.Name())
		t.Log("running as a user who writes in read-only directories: the missing directory stands in")
		dir += "/missing"
	}
	d := newDiverter(bytes.NewReader(sent), Divert{Dir: dir}, 1024)
	_, err := pgproto3.NewFrontend(d, io.Discard).Receive()
	if err == nil || !strings.Contains(err.Error(), "--spill-dir") {
		t.Fatalf("got %v, want a refusal naming --spill-dir", err)
	}
}

// TestDiverterQuota: the messages set aside count against the quota
// shared with the spool while they are held, and are handed back once
// unmapped; a message that does not fit ends the stream with ErrFull and a
// sentence naming --spill-max-bytes, and takes nothing from the quota.
func TestDiverterQuota(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	body := payload(r, 4096)
	sent := append(xlog(1, body), xlog(2, payload(r, 4096))...)
	quota := mapped.NewQuota(6000)
	d := newDiverter(bytes.NewReader(sent), Divert{Dir: t.TempDir(), Quota: quota}, 1024)
	f := pgproto3.NewFrontend(d, io.Discard)
	msg, err := f.Receive()
	if err != nil {
		t.Fatal(err)
	}
	region, ok, err := d.take(msg.(*pgproto3.CopyData).Data[xlogHeader:])
	if err != nil || !ok {
		t.Fatalf("no stand-in for a large XLogData (%v)", err)
	}
	size := int64(len(region.Bytes()))
	if quota.Used() != size {
		t.Fatalf("quota used %d while a %d-byte message is held", quota.Used(), size)
	}
	// The second does not fit beside the first.
	_, err = f.Receive()
	if !errors.Is(err, mapped.ErrFull) || !strings.Contains(err.Error(), "--spill-max-bytes") {
		t.Fatalf("got %v, want ErrFull naming --spill-max-bytes", err)
	}
	if quota.Used() != size {
		t.Fatalf("quota used %d after a refusal, want %d", quota.Used(), size)
	}
	region.Close()
	d.close()
	if quota.Used() != 0 {
		t.Fatalf("quota used %d once the message was unmapped", quota.Used())
	}
}

// FuzzDiverter: whatever the bytes and the pieces they come in, the
// diverter never panics, and a stream of whole messages reads back as sent
// once each stand-in is swapped for the message set aside.
func FuzzDiverter(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 3))
	sent, _ := stream(r, 64, true)
	f.Add(sent[:2000], uint64(1))
	f.Add(xlog(9, payload(r, 100)), uint64(2))
	f.Add([]byte{'d', 0xff, 0xff, 0xff, 0xff, 'w'}, uint64(3))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		quota := mapped.NewQuota(1 << 30)
		d := newDiverter(&choppy{b: in, plan: rand.New(rand.NewPCG(seed, 1))}, Divert{Dir: t.TempDir(), Quota: quota}, 64)
		out, _ := readThrough(d, func() int { return 1 + int(seed%97) })
		if !whole(in) {
			d.close()
			if quota.Used() != 0 {
				t.Fatalf("%d bytes counted against the quota after close", quota.Used())
			}
			return
		}
		defer func() {
			d.close()
			if quota.Used() != 0 {
				t.Fatalf("%d bytes counted against the quota after close", quota.Used())
			}
		}()
		var back []byte
		for len(out) >= msgHeader {
			n := msgHeader - 4 + int(binary.BigEndian.Uint32(out[1:]))
			m := out[:n]
			out = out[n:]
			if n == standInSize && m[0] == 'd' && m[msgHeader] == 'w' {
				region, ok, err := d.take(m[msgHeader+xlogHeader:])
				if ok && err == nil {
					body := append(append([]byte{}, m[msgHeader:msgHeader+xlogHeader]...), region.Bytes()...)
					region.Close()
					m = message('d', body)
				}
			}
			back = append(back, m...)
		}
		if !bytes.Equal(back, in) {
			t.Fatalf("read back %d bytes, sent %d", len(back), len(in))
		}
	})
}

// whole reports whether b is a sequence of whole messages.
func whole(b []byte) bool {
	for len(b) > 0 {
		if len(b) < msgHeader {
			return false
		}
		n := int(int32(binary.BigEndian.Uint32(b[1:])))
		if n < 4 || n-4 > len(b)-msgHeader {
			return false
		}
		b = b[msgHeader-4+n:]
	}
	return true
}
