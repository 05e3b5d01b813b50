// Package spool keeps the transactions PostgreSQL streams while they are
// still in progress until they commit, on the agent's side.
//
// With pgoutput protocol 2 and streaming on (PostgreSQL 14+), the
// walsender sends a transaction that outgrows logical_decoding_work_mem in
// blocks as it goes, instead of writing its decoded changes to the
// database server's disk and reading them back at COMMIT. The blocks of
// several transactions interleave with each other and with whole
// transactions; each streamed one ends with STREAM COMMIT, in commit
// order, or STREAM ABORT, for the transaction or one subtransaction.
//
// A Spool takes every message of the session (Offer). Messages of no
// stream block pass through to the decoder. Those inside a block are
// appended to their transaction's record, held in memory up to
// Config.Memory across all transactions; past it the largest transaction
// moves to an unlinked file in Config.Dir, where the rest of it goes too
// (through a buffer of its own), up to Config.MaxDisk. At STREAM COMMIT the
// transaction is replayed (Replay), its aborted subtransactions left out:
// the decoder sees the same messages, in the same order, as protocol 1
// gives for the same transaction, so the events, keys and guarantees are
// those of a transaction sent whole.
//
// Nothing here needs to survive a crash: the slot's position never passes
// an uncommitted transaction, so after a restart PostgreSQL streams it
// again from its start. The files are unlinked as soon as they are made,
// so a crash leaves nothing behind.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Defaults of Config.
const (
	DefaultMemory  = 8 << 20
	DefaultMaxDisk = 10 << 30
)

// DefaultDir is the spill directory when none is configured: pgaudit-cdc
// in the system's temporary directory.
func DefaultDir() string { return filepath.Join(os.TempDir(), "pgaudit-cdc") }

// Config bounds a Spool.
type Config struct {
	// Dir receives what does not fit in memory (--spill-dir).
	Dir string
	// Memory is how many bytes of streamed changes, over all open
	// transactions, are kept in memory before the largest transaction's
	// are written out (DefaultMemory when 0).
	Memory int64
	// MaxDisk caps the bytes in Dir (DefaultMaxDisk when 0). Reaching it
	// stops capture with ErrFull: nothing is confirmed past the
	// transaction, so nothing is lost.
	MaxDisk int64
	// Quota counts the bytes in Dir against its cap. Share it with
	// whatever else writes there (the replication session's large
	// messages, replication.Divert); Open makes one of MaxDisk when nil
	// (a Quota given has its own cap: make it of MaxDisk).
	Quota *mapped.Quota
}

// ErrFull is wrapped when a streamed transaction does not fit in the
// spill directory (MaxDisk, or the file system full).
var ErrFull = mapped.ErrFull

// ErrProtocol is wrapped when the stream blocks do not follow the
// protocol (a block inside a block, a change outside one).
var ErrProtocol = errors.New("unexpected pgoutput stream sequence")

// recordHeader is the size of a record's header: the message's WAL
// position (8 bytes), its (sub)transaction (4) and its length (4).
const recordHeader = 16

// Spool holds the streamed transactions of one replication session. It is
// used by one goroutine.
type Spool struct {
	cfg  Config
	txs  map[uint32]*txn
	cur  *txn // the transaction of the open stream block; nil outside one
	mem  int64
	disk int64
	// spilled counts the bytes ever written to Dir.
	spilled int64
}

// txn is one streamed transaction: its records in memory (buf) until it
// spills, then in its file, written through w.
type txn struct {
	xid     uint32
	buf     []byte
	file    *os.File      // unlinked; nil until the transaction spills
	w       *bufio.Writer // to file
	size    int64         // bytes written to w
	aborted map[uint32]bool
}

// writeBuffer is the buffer of a spilled transaction's file: what it
// holds in memory from then on.
const writeBuffer = 256 << 10

// Open checks that cfg.Dir can hold spilled transactions, creating it when
// missing, and returns an empty Spool.
func Open(cfg Config) (*Spool, error) {
	if cfg.Memory <= 0 {
		cfg.Memory = DefaultMemory
	}
	if cfg.MaxDisk <= 0 {
		cfg.MaxDisk = DefaultMaxDisk
	}
	if cfg.Quota == nil {
		cfg.Quota = mapped.NewQuota(cfg.MaxDisk)
	}
	if err := CheckDir(cfg.Dir); err != nil {
		return nil, err
	}
	return &Spool{cfg: cfg, txs: map[uint32]*txn{}}, nil
}

// CheckDir checks that dir can hold spilled files, creating it (mode 0700)
// when missing.
func CheckDir(dir string) error {
	if dir == "" {
		return errors.New("no spill directory: set --spill-dir to a writable directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("the spill directory %s cannot be created (%w): set --spill-dir to a writable directory", dir, err)
	}
	f, err := create(dir)
	if err != nil {
		return fmt.Errorf("the spill directory %s is not writable (%w): set --spill-dir to a writable directory", dir, err)
	}
	return f.Close()
}

// create makes an unlinked file in dir.
func create(dir string) (*os.File, error) {
	return mapped.TempFile(dir, "pgaudit-cdc-stream-*.spill")
}

// Event says what a message did to the spool.
type Event uint8

// Events of Offer.
const (
	None      Event = iota // the message passes, or was added to a block
	Opened                 // a transaction's first block began
	Committed              // a streamed transaction committed: Outcome.Replay
	Aborted                // a streamed transaction was discarded whole
)

// Outcome is what Offer made of a message.
type Outcome struct {
	// Pass: the message belongs to no stream block; the decoder takes it
	// as it is.
	Pass  bool
	Event Event
	// Replay, at Committed, gives the transaction's messages. The caller
	// must Close it.
	Replay *Replay
}

// Offer takes the next message of the session, received at lsn. A message
// inside a stream block is copied: data may be reused once Offer returns.
// release, when set, is handed the pieces of a large message once copied
// (mapped.Region.Release): one mapped from a file is then never held whole.
func (s *Spool) Offer(lsn pgoutput.LSN, data []byte, release func([]byte)) (Outcome, error) {
	if len(data) == 0 {
		return Outcome{Pass: true}, nil
	}
	switch data[0] {
	case 'S', 'E', 'c', 'A':
		m, err := pgoutput.Parse(data)
		if err != nil {
			return Outcome{}, err
		}
		return s.control(lsn, m)
	}
	if s.cur == nil {
		return Outcome{Pass: true}, nil
	}
	xid, ok := pgoutput.StreamedXid(data)
	switch {
	case ok:
	case data[0] == 'O':
		xid = s.cur.xid
	default:
		return Outcome{}, fmt.Errorf("%w: message %q inside the stream block of xid %d", ErrProtocol, data[0], s.cur.xid)
	}
	return Outcome{}, s.append(s.cur, lsn, xid, data, release)
}

// control applies a stream control message.
func (s *Spool) control(lsn pgoutput.LSN, m pgoutput.Message) (Outcome, error) {
	switch m := m.(type) {
	case *pgoutput.StreamStartMessage:
		if s.cur != nil {
			return Outcome{}, fmt.Errorf("%w: STREAM START of xid %d inside the block of xid %d", ErrProtocol, m.Xid, s.cur.xid)
		}
		t, open := s.txs[m.Xid]
		switch {
		case !open && m.FirstSegment:
			t = &txn{xid: m.Xid}
			s.txs[m.Xid] = t
			s.cur = t
			return Outcome{Event: Opened}, nil
		case open && !m.FirstSegment:
			s.cur = t
			return Outcome{}, nil
		case open:
			return Outcome{}, fmt.Errorf("%w: xid %d streamed its first block twice", ErrProtocol, m.Xid)
		default:
			return Outcome{}, fmt.Errorf("%w: a later block of xid %d without its first", ErrProtocol, m.Xid)
		}
	case *pgoutput.StreamStopMessage:
		if s.cur == nil {
			return Outcome{}, fmt.Errorf("%w: STREAM STOP outside a block", ErrProtocol)
		}
		s.cur = nil
		return Outcome{}, nil
	case *pgoutput.StreamCommitMessage:
		if s.cur != nil {
			return Outcome{}, fmt.Errorf("%w: STREAM COMMIT of xid %d inside a block", ErrProtocol, m.Xid)
		}
		t, open := s.txs[m.Xid]
		if !open {
			return Outcome{}, fmt.Errorf("%w: STREAM COMMIT of xid %d, which streamed nothing", ErrProtocol, m.Xid)
		}
		delete(s.txs, m.Xid)
		rp, err := s.replay(t, lsn, *m)
		if err != nil {
			return Outcome{}, err
		}
		return Outcome{Event: Committed, Replay: rp}, nil
	case *pgoutput.StreamAbortMessage:
		if s.cur != nil {
			return Outcome{}, fmt.Errorf("%w: STREAM ABORT of xid %d inside a block", ErrProtocol, m.Xid)
		}
		t, open := s.txs[m.Xid]
		if !open {
			// Nothing of it is held: nothing to discard.
			return Outcome{}, nil
		}
		if m.SubXid != m.Xid {
			if t.aborted == nil {
				t.aborted = map[uint32]bool{}
			}
			t.aborted[m.SubXid] = true
			return Outcome{}, nil
		}
		delete(s.txs, m.Xid)
		s.release(t)
		return Outcome{Event: Aborted}, nil
	}
	return Outcome{}, fmt.Errorf("%w: message type %q", ErrProtocol, m.Type())
}

// append adds one record to t: to its file once it spilled, else to
// memory, writing the largest transaction out when memory is over its
// bound.
func (s *Spool) append(t *txn, lsn pgoutput.LSN, xid uint32, data []byte, release func([]byte)) error {
	var h [recordHeader]byte
	binary.BigEndian.PutUint64(h[:], uint64(lsn))
	binary.BigEndian.PutUint32(h[8:], xid)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	if t.file == nil && len(data) > bigRecord {
		// Replayed mapped from the file (Replay.Next), never read whole.
		if err := s.spill(t); err != nil {
			return err
		}
	}
	if t.file != nil {
		// The whole record fits under the cap, or none of it is written.
		if err := s.room(t, int64(recordHeader+len(data))); err != nil {
			return err
		}
		if err := s.write(t, h[:]); err != nil {
			return err
		}
		for len(data) > 0 {
			n := min(len(data), bigRecord)
			if err := s.write(t, data[:n]); err != nil {
				return err
			}
			if release != nil {
				release(data[:n])
			}
			data = data[n:]
		}
		return nil
	}
	t.buf = append(append(t.buf, h[:]...), data...)
	s.mem += int64(recordHeader + len(data))
	for s.mem > s.cfg.Memory {
		largest := t
		for _, o := range s.txs {
			if len(o.buf) > len(largest.buf) {
				largest = o
			}
		}
		if len(largest.buf) == 0 {
			return nil // what is over is a replay's, freed at its Close
		}
		if err := s.spill(largest); err != nil {
			return err
		}
	}
	return nil
}

// spill moves t's records from memory to a file of its own, where its
// next records go too.
func (s *Spool) spill(t *txn) error {
	f, err := create(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("spilling xid %d to %s: %w: check --spill-dir is writable", t.xid, s.cfg.Dir, err)
	}
	t.file, t.w = f, bufio.NewWriterSize(f, writeBuffer)
	buf := t.buf
	s.mem -= int64(len(buf))
	t.buf = nil
	return s.write(t, buf)
}

// write appends bytes to t's file, within the cap.
func (s *Spool) write(t *txn, parts ...[]byte) error {
	n := int64(0)
	for _, p := range parts {
		n += int64(len(p))
	}
	if !s.cfg.Quota.TryAdd(n) {
		return s.full(t)
	}
	for _, p := range parts {
		if _, err := t.w.Write(p); err != nil {
			s.cfg.Quota.Add(-n)
			return s.writeError(t, err)
		}
	}
	t.size += n
	s.disk += n
	s.spilled += n
	return nil
}

// room checks that n more bytes of t fit under the cap now (write counts
// them).
func (s *Spool) room(t *txn, n int64) error {
	if !s.cfg.Quota.Fits(n) {
		return s.full(t)
	}
	return nil
}

// full is the error of a transaction the cap leaves no room for.
func (s *Spool) full(t *txn) error {
	return s.cfg.Quota.Refused(fmt.Sprintf("xid %d", t.xid), s.cfg.Dir)
}

func (s *Spool) writeError(t *txn, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: spilling xid %d to %s: %w: free the disk or set --spill-dir to a larger one; nothing past the transaction was confirmed, so it is streamed again",
			ErrFull, t.xid, s.cfg.Dir, err)
	}
	return fmt.Errorf("spilling xid %d to %s: %w", t.xid, s.cfg.Dir, err)
}

// release frees what t holds.
func (s *Spool) release(t *txn) {
	s.mem -= int64(len(t.buf))
	s.disk -= t.size
	s.cfg.Quota.Add(-t.size)
	t.buf, t.size, t.w = nil, 0, nil
	if t.file != nil {
		t.file.Close()
		t.file = nil
	}
}

// InBlock reports whether a stream block is open: the messages that come
// belong to a transaction still in progress. A nil Spool has none.
func (s *Spool) InBlock() bool { return s != nil && s.cur != nil }

// Reset discards every transaction: the session ended, and the next one
// streams them again from their start.
func (s *Spool) Reset() {
	for xid, t := range s.txs {
		s.release(t)
		delete(s.txs, xid)
	}
	s.cur = nil
}

// Stats is what a Spool holds.
type Stats struct {
	Open        int   // streamed transactions not yet committed or aborted
	MemoryBytes int64 // their records in memory
	DiskBytes   int64 // their records in the spill directory
	// SpilledBytes counts every byte ever written to the spill directory.
	SpilledBytes int64
}

// Stats returns what s holds now.
func (s *Spool) Stats() Stats {
	return Stats{Open: len(s.txs), MemoryBytes: s.mem, DiskBytes: s.disk, SpilledBytes: s.spilled}
}

// Replay gives a committed streamed transaction's messages in the order
// they were streamed, without those of aborted subtransactions.
type Replay struct {
	// Commit is the STREAM COMMIT message, and At its WAL position.
	Commit pgoutput.StreamCommitMessage
	At     pgoutput.LSN

	s      *Spool
	t      *txn
	in     *bufio.Reader  // the file's records; nil once read or when none
	off    int64          // where in the file the next record starts
	mem    []byte         // the records in memory, not yet given
	rec    []byte         // the last record read from the file
	region *mapped.Region // the last record, when mapped from the file
}

func (s *Spool) replay(t *txn, lsn pgoutput.LSN, m pgoutput.StreamCommitMessage) (*Replay, error) {
	r := &Replay{Commit: m, At: lsn, s: s, t: t, mem: t.buf}
	if t.file != nil {
		if err := t.w.Flush(); err != nil {
			s.release(t)
			return nil, s.writeError(t, err)
		}
		if _, err := t.file.Seek(0, io.SeekStart); err != nil {
			s.release(t)
			return nil, fmt.Errorf("reading back xid %d from %s: %w", t.xid, s.cfg.Dir, err)
		}
		r.in = bufio.NewReaderSize(io.LimitReader(t.file, t.size), 256<<10)
	}
	return r, nil
}

// Release hands back the pages of a piece of the last record Next gave
// once it is used, when that record is mapped from the file (see
// bigRecord). Stream.SetRelease in package decode takes it.
func (r *Replay) Release(p []byte) {
	if r.region != nil {
		r.region.Release(p)
	}
}

// Begin is the BEGIN message protocol 1 gives the transaction.
func (r *Replay) Begin() *pgoutput.BeginMessage {
	return &pgoutput.BeginMessage{FinalLSN: r.Commit.CommitLSN, CommitTime: r.Commit.CommitTime, Xid: r.Commit.Xid}
}

// End is the COMMIT message protocol 1 gives the transaction.
func (r *Replay) End() *pgoutput.CommitMessage {
	return &pgoutput.CommitMessage{Flags: r.Commit.Flags, CommitLSN: r.Commit.CommitLSN, EndLSN: r.Commit.EndLSN, CommitTime: r.Commit.CommitTime}
}

// Next returns the next message and its WAL position, or io.EOF after the
// last. data is valid until the next call; it is a message as sent inside
// a stream block (pgoutput.Parser.ParseStreamed reads it).
func (r *Replay) Next() (lsn pgoutput.LSN, data []byte, err error) {
	r.unmap()
	for {
		var xid uint32
		switch {
		case r.in != nil:
			lsn, xid, data, err = r.fromFile()
			if err == io.EOF {
				r.in = nil
				continue
			}
			if err != nil {
				return 0, nil, err
			}
		case len(r.mem) > 0:
			if len(r.mem) < recordHeader {
				return 0, nil, fmt.Errorf("BUG: spool: a record of xid %d cut short in memory", r.t.xid)
			}
			lsn = pgoutput.LSN(binary.BigEndian.Uint64(r.mem))
			xid = binary.BigEndian.Uint32(r.mem[8:])
			n := int(binary.BigEndian.Uint32(r.mem[12:]))
			data, r.mem = r.mem[recordHeader:recordHeader+n], r.mem[recordHeader+n:]
		default:
			return 0, nil, io.EOF
		}
		if !r.t.aborted[xid] {
			return lsn, data, nil
		}
	}
}

// fromFile reads the next record of the file.
func (r *Replay) fromFile() (pgoutput.LSN, uint32, []byte, error) {
	var h [recordHeader]byte
	if _, err := io.ReadFull(r.in, h[:]); err != nil {
		if err == io.EOF {
			return 0, 0, nil, io.EOF
		}
		return 0, 0, nil, fmt.Errorf("reading back xid %d from %s: %w", r.t.xid, r.s.cfg.Dir, err)
	}
	n := int(binary.BigEndian.Uint32(h[12:]))
	lsn, xid := pgoutput.LSN(binary.BigEndian.Uint64(h[:])), binary.BigEndian.Uint32(h[8:])
	r.off += recordHeader
	if n > bigRecord {
		data, err := r.mapRecord(n)
		return lsn, xid, data, err
	}
	if cap(r.rec) < n || cap(r.rec) > maxKeptRecord && n <= maxKeptRecord {
		r.rec = make([]byte, n)
	}
	r.rec = r.rec[:n]
	if _, err := io.ReadFull(r.in, r.rec); err != nil {
		return 0, 0, nil, fmt.Errorf("reading back xid %d from %s: %w", r.t.xid, r.s.cfg.Dir, noEOF(err))
	}
	r.off += int64(n)
	return lsn, xid, r.rec, nil
}

// mapRecord maps the n-byte record at r.off from the file, and goes on
// reading after it.
func (r *Replay) mapRecord(n int) ([]byte, error) {
	region, err := mapped.Map(r.t.file, r.off, int64(n))
	if err == nil {
		r.off += int64(n)
		_, err = r.t.file.Seek(r.off, io.SeekStart)
	}
	if err != nil {
		region.Close()
		return nil, fmt.Errorf("reading back xid %d from %s: %w", r.t.xid, r.s.cfg.Dir, err)
	}
	r.in.Reset(io.LimitReader(r.t.file, r.t.size-r.off))
	r.unmap() // a record of an aborted subtransaction, skipped by Next
	r.region = region
	return region.Bytes(), nil
}

// unmap lets the last record mapped go.
func (r *Replay) unmap() {
	if r.region != nil {
		r.region.Close()
		r.region = nil
	}
}

// maxKeptRecord bounds the record buffer a replay keeps for the next
// record: one huge row's is let go.
const maxKeptRecord = 1 << 20

// bigRecord is the size over which a record always goes to the file, in
// pieces of this size, and is replayed mapped from it: a row of hundreds of
// megabytes is then never held whole beside the envelope built from it.
const bigRecord = 4 << 20

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Close frees the transaction's memory and file.
func (r *Replay) Close() {
	r.unmap()
	if r.t != nil {
		r.s.release(r.t)
		r.t, r.in, r.mem, r.rec = nil, nil, nil, nil
	}
}
