package replication

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"

	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
)

// DivertOver is the size over which an XLogData message is set aside in a
// file as it arrives (see diverter) instead of being read into memory.
const DivertOver = 16 << 20

// diverter stands between pgproto3 and the connection (pgconn's
// BuildFrontend) and sets every CopyData message over DivertOver that
// carries XLogData aside in an unlinked file of dir as it arrives.
// pgproto3 reads the whole of every message into one buffer, so a 200 MiB
// row would otherwise be held whole while its envelope is built; from the
// file it is mapped (package mapped) and its pages handed back as they are
// converted. In its place pgproto3 reads a stand-in: the same XLogData
// header, then standIn and the message's number. Session.Receive swaps
// the stand-in for the mapped message.
//
// Every other byte passes through untouched, read straight into
// pgproto3's buffer: the diverter only follows the framing (a type byte
// and a length). It holds back, and copies, only a message header split
// between two reads, and what a read brought past the header of a message
// to set aside. A read that times out part way (Session.Poll, a deadline)
// is resumed by the next one, as pgconn expects.
type diverter struct {
	src   io.Reader
	dir   string
	quota *mapped.Quota // what the files may take in dir
	over  int

	skip    int    // body bytes of the message being passed through still to come
	held    []byte // read from src, not yet passed on; starts at a message header
	clear   int    // bytes at the start of held that pass let through
	heldBuf []byte // held's array, from its start, for the next time
	srcErr  error  // came with bytes now held: returned once they are passed on
	out     []byte // a stand-in to pass on before anything else
	plain   bool   // the header at held[0] is passed through even if large

	file  *os.File      // the file the message being set aside goes to
	w     *bufio.Writer // to file
	left  int64         // bytes of it still to come
	size  int64         // bytes of it in all
	buf   []byte        // what it is read from src through
	head  [xlogHeader]byte
	count uint64 // messages set aside so far

	ready []diverted // set aside, stand-in passed on, not yet taken
	err   error      // the stream cannot go on
}

// diverted is one message set aside: its number and file.
type diverted struct {
	n    uint64
	file *os.File
	size int64
}

const (
	msgHeader  = 5             // type byte, then the length, itself included
	xlogHeader = 1 + 8 + 8 + 8 // 'w', WAL start, WAL end, send time
	// standIn starts the stand-in's pgoutput message: no pgoutput message
	// starts with a zero byte.
	standIn     = 0x00
	standInSize = msgHeader + xlogHeader + 1 + 8
)

func newDiverter(src io.Reader, to Divert, over int) *diverter {
	q := to.Quota
	if q == nil {
		q = mapped.NewQuota(math.MaxInt64)
	}
	return &diverter{src: src, dir: to.Dir, quota: q, over: over}
}

func (d *diverter) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		switch {
		case d.err != nil:
			return 0, d.err
		case len(d.out) > 0:
			n := copy(p, d.out)
			d.out = d.out[n:]
			return n, nil
		case d.file != nil:
			if err := d.setAside(); err != nil {
				return 0, err
			}
		case len(d.held) > 0:
			if d.clear == 0 {
				d.clear = d.pass(d.held)
			}
			if d.clear > 0 {
				n := copy(p, d.held[:d.clear])
				d.held, d.clear = d.held[n:], d.clear-n
				return n, nil
			}
			if err := d.atHeld(); err != nil {
				return 0, err
			}
		case d.srcErr != nil:
			err := d.srcErr
			d.srcErr = nil
			return 0, err
		default:
			n, err := d.src.Read(p)
			k := d.pass(p[:n])
			if k < n {
				d.hold(p[k:n])
				d.srcErr = err
				err = nil
			}
			if k > 0 || err != nil {
				return k, err
			}
		}
	}
}

// pass follows the framing through b and returns how many of its bytes
// may be passed on: up to a message header that b holds only part of, or
// the header of a message to set aside.
func (d *diverter) pass(b []byte) int {
	i := 0
	for {
		if d.skip >= len(b)-i {
			d.skip -= len(b) - i
			return len(b)
		}
		i += d.skip
		d.skip = 0
		if len(b)-i < msgHeader {
			return i
		}
		body := int(int32(binary.BigEndian.Uint32(b[i+1:]))) - 4
		if body < 0 {
			// pgproto3 refuses it with its own error; nothing to follow.
			d.skip = 1 << 62
			return len(b)
		}
		if b[i] == 'd' && body > d.over && !(i == 0 && d.plain) {
			return i
		}
		d.plain = false
		d.skip = body
		i += msgHeader
	}
}

// hold keeps b, read from src, to pass on later.
func (d *diverter) hold(b []byte) {
	if len(d.held) == 0 {
		d.held = append(d.heldBuf[:0], b...)
		d.heldBuf = d.held[:0]
		return
	}
	d.held = append(d.held, b...)
}

// atHeld acts on a held message header that pass stopped at: it reads
// the rest of the header, then sets the message aside or lets it pass.
func (d *diverter) atHeld() error {
	if err := d.holdUpTo(msgHeader); err != nil {
		return err
	}
	body := int(int32(binary.BigEndian.Uint32(d.held[1:]))) - 4
	if d.held[0] != 'd' || body <= d.over {
		// Only split between reads: it passes once whole.
		return nil
	}
	if err := d.holdUpTo(msgHeader + xlogHeader); err != nil {
		return err
	}
	if d.held[msgHeader] != 'w' {
		d.plain = true
		return nil
	}
	return d.begin()
}

// holdUpTo reads from src until n bytes are held. It reads no further:
// a small message's next may be long in coming.
func (d *diverter) holdUpTo(n int) error {
	for len(d.held) < n {
		var b [msgHeader + xlogHeader]byte
		d.srcErr = nil // a later read says how the connection is
		k, err := d.src.Read(b[:n-len(d.held)])
		d.hold(b[:k])
		if err != nil {
			return err
		}
	}
	return nil
}

// begin starts setting aside the message whose headers are held.
func (d *diverter) begin() error {
	body := int64(binary.BigEndian.Uint32(d.held[1:])) - 4
	size := body - xlogHeader
	if !d.quota.TryAdd(size) {
		d.err = d.quota.Refused(fmt.Sprintf("setting aside a %d-byte message from the replication stream", body), d.dir)
		return d.err
	}
	f, err := mapped.TempFile(d.dir, "pgaudit-cdc-message-*.spill")
	if err != nil {
		d.quota.Add(-size)
		d.err = fmt.Errorf("setting aside a %d-byte message from the replication stream: %w: set --spill-dir to a writable directory with room", body, err)
		return d.err
	}
	copy(d.head[:], d.held[msgHeader:msgHeader+xlogHeader])
	d.held = d.held[msgHeader+xlogHeader:]
	d.file, d.size, d.left = f, size, size
	if d.w == nil {
		d.w = bufio.NewWriterSize(f, 256<<10)
		d.buf = make([]byte, 256<<10)
	} else {
		d.w.Reset(f)
	}
	// What was held past the headers belongs to the message first.
	n := int(min(int64(len(d.held)), d.left))
	if err := d.write(d.held[:n]); err != nil {
		return err
	}
	d.held = d.held[n:]
	return nil
}

// setAside copies the rest of the message being set aside from src to
// its file, and queues its stand-in once it is all there.
func (d *diverter) setAside() error {
	for d.left > 0 {
		d.srcErr = nil // a later read says how the connection is
		n, err := d.src.Read(d.buf[:min(int64(len(d.buf)), d.left)])
		if werr := d.write(d.buf[:n]); werr != nil {
			return werr
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	if err := d.w.Flush(); err != nil {
		return d.fail(err)
	}
	d.count++
	d.ready = append(d.ready, diverted{n: d.count, file: d.file, size: d.size})
	d.file = nil
	d.out = binary.BigEndian.AppendUint32([]byte{'d'}, standInSize-1)
	d.out = append(d.out, d.head[:]...)
	d.out = append(d.out, standIn)
	d.out = binary.BigEndian.AppendUint64(d.out, d.count)
	return nil
}

func (d *diverter) write(b []byte) error {
	if _, err := d.w.Write(b); err != nil {
		return d.fail(err)
	}
	d.left -= int64(len(b))
	return nil
}

// fail ends the stream: the message cannot be set aside whole.
func (d *diverter) fail(err error) error {
	d.file.Close()
	d.file = nil
	d.quota.Add(-d.size)
	if errors.Is(err, syscall.ENOSPC) {
		err = fmt.Errorf("%w: %w", mapped.ErrFull, err)
	}
	d.err = fmt.Errorf("setting aside a %d-byte message from the replication stream in %s: %w: free space there or set --spill-dir to a larger file system; nothing past it was confirmed, so it is streamed again", d.size, d.dir, err)
	return d.err
}

// take maps the message set aside that a stand-in names (the WALData of
// the stand-in's XLogData); ok is false when data is no stand-in.
func (d *diverter) take(data []byte) (r *mapped.Region, ok bool, err error) {
	if len(data) != 9 || data[0] != standIn {
		return nil, false, nil
	}
	n := binary.BigEndian.Uint64(data[1:])
	if len(d.ready) == 0 || d.ready[0].n != n {
		return nil, true, fmt.Errorf("receiving from the replication stream: message %d set aside is missing", n)
	}
	m := d.ready[0]
	d.ready = d.ready[1:]
	defer m.file.Close()
	r, err = mapped.Map(m.file, 0, m.size)
	if err != nil {
		d.quota.Add(-m.size)
		return nil, true, err
	}
	// The file's blocks are freed once the region is unmapped.
	r.AfterClose(func() { d.quota.Add(-m.size) })
	return r, true, nil
}

// close drops what was set aside and not taken.
func (d *diverter) close() {
	for _, m := range d.ready {
		m.file.Close()
		d.quota.Add(-m.size)
	}
	d.ready = nil
	if d.file != nil {
		d.file.Close()
		d.file = nil
		d.quota.Add(-d.size)
	}
}
