package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgoutputtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

var newMsg, col = pgoutputtest.New, pgoutputtest.Col

func start(xid uint32, first bool) []byte {
	f := uint8(0)
	if first {
		f = 1
	}
	return newMsg('S').U32(xid).U8(f)
}

func stop() []byte { return newMsg('E') }

func commit(xid uint32, at uint64) []byte {
	return newMsg('c').U32(xid).U8(0).U64(at).U64(at + 0x28).U64(848_000_000_000_000)
}

func abort(xid, sub uint32) []byte { return newMsg('A').U32(xid).U32(sub) }

// insert is an INSERT of row v as (sub)transaction xid sends it inside a
// stream block.
func insert(xid uint32, v string) []byte {
	return newMsg('I').U32(xid).U32(16385).U8('N').Tuple(col().Text(v))
}

// rowOf returns the value a streamed INSERT of insert carries.
func rowOf(t *testing.T, data []byte) string {
	t.Helper()
	var p pgoutput.Parser
	_, m, err := p.ParseStreamed(data)
	if err != nil {
		t.Fatalf("replayed message: %v", err)
	}
	return string(m.(*pgoutput.InsertMessage).New[0].Data)
}

func open(t *testing.T, memory, maxDisk int64) *Spool {
	t.Helper()
	s, err := Open(Config{Dir: t.TempDir(), Memory: memory, MaxDisk: maxDisk})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// feed offers msgs at increasing positions and returns the replays of the
// transactions that committed, with the messages that passed.
func feed(t *testing.T, s *Spool, msgs ...[]byte) (replays []*Replay, passed [][]byte) {
	t.Helper()
	for i, m := range msgs {
		out, err := s.Offer(pgoutput.LSN(0x1000+i), m, nil)
		if err != nil {
			t.Fatalf("Offer #%d (%q): %v", i, m[0], err)
		}
		if out.Pass {
			passed = append(passed, m)
		}
		if out.Replay != nil {
			replays = append(replays, out.Replay)
		}
	}
	return replays, passed
}

func drain(t *testing.T, r *Replay) []string {
	t.Helper()
	defer r.Close()
	var rows []string
	for {
		_, data, err := r.Next()
		if err == io.EOF {
			return rows
		}
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, rowOf(t, data))
	}
}

func TestInterleavedTransactionsReplayWholeInCommitOrder(t *testing.T) {
	for _, memory := range []int64{1, 64, DefaultMemory} { // always spilling, sometimes, never
		t.Run(fmt.Sprint("memory ", memory), func(t *testing.T) {
			s := open(t, memory, 0)
			whole := pgoutputtest.Begin(0x50, 9)
			replays, passed := feed(t, s,
				start(7, true), insert(7, "a1"), insert(7, "a2"), stop(),
				start(8, true), insert(8, "b1"), stop(),
				whole, // a whole transaction between blocks passes through
				start(7, false), insert(7, "a3"), stop(),
				commit(8, 0x60),
				start(7, false), insert(7, "a4"), stop(),
				commit(7, 0x70))
			if len(passed) != 1 || string(passed[0]) != string(whole) {
				t.Fatalf("passed %q, want the whole transaction's BEGIN", passed)
			}
			if len(replays) != 2 {
				t.Fatalf("%d replays, want 2", len(replays))
			}
			b := replays[0]
			if got := drain(t, b); !slices.Equal(got, []string{"b1"}) {
				t.Errorf("xid 8 replayed %q", got)
			}
			if got, want := *b.Begin(), (pgoutput.BeginMessage{FinalLSN: 0x60, CommitTime: 848_000_000_000_000, Xid: 8}); got != want {
				t.Errorf("Begin = %+v, want %+v", got, want)
			}
			if got, want := *b.End(), (pgoutput.CommitMessage{CommitLSN: 0x60, EndLSN: 0x88, CommitTime: 848_000_000_000_000}); got != want {
				t.Errorf("End = %+v, want %+v", got, want)
			}
			if got := drain(t, replays[1]); !slices.Equal(got, []string{"a1", "a2", "a3", "a4"}) {
				t.Errorf("xid 7 replayed %q", got)
			}
			if st := s.Stats(); st.Open != 0 || st.MemoryBytes != 0 || st.DiskBytes != 0 {
				t.Errorf("after both commits the spool holds %+v", st)
			}
			if st := s.Stats(); (memory < DefaultMemory) != (st.SpilledBytes > 0) {
				t.Errorf("memory %d spilled %d bytes", memory, st.SpilledBytes)
			}
		})
	}
}

func TestAbortedSubtransactionsAreLeftOut(t *testing.T) {
	s := open(t, 1, 0)
	replays, _ := feed(t, s,
		start(7, true), insert(7, "kept1"), insert(10, "savepoint rolled back"), insert(11, "its child"), stop(),
		abort(7, 11), abort(7, 10), // ROLLBACK TO SAVEPOINT: the child and the subtransaction
		start(7, false), insert(12, "kept2 (a released savepoint)"), insert(7, "kept3"), stop(),
		commit(7, 0x70))
	if got := drain(t, replays[0]); !slices.Equal(got, []string{"kept1", "kept2 (a released savepoint)", "kept3"}) {
		t.Errorf("replayed %q", got)
	}
}

func TestAbortDiscardsTheTransaction(t *testing.T) {
	s := open(t, 1, 0)
	out := make([]Outcome, 0)
	for i, m := range [][]byte{start(7, true), insert(7, "x"), insert(7, "y"), stop()} {
		o, err := s.Offer(pgoutput.LSN(i), m, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	if out[0].Event != Opened {
		t.Errorf("first block's event %v, want Opened", out[0].Event)
	}
	if st := s.Stats(); st.Open != 1 || st.DiskBytes == 0 {
		t.Fatalf("before the abort: %+v, want one open transaction on disk", st)
	}
	o, err := s.Offer(9, abort(7, 7), nil)
	if err != nil || o.Event != Aborted {
		t.Fatalf("abort: %+v, %v", o, err)
	}
	if st := s.Stats(); st.Open != 0 || st.DiskBytes != 0 || st.MemoryBytes != 0 {
		t.Errorf("after the abort: %+v", st)
	}
	// An abort of what holds nothing (never streamed) discards nothing.
	if o, err := s.Offer(10, abort(99, 99), nil); err != nil || o.Event != None {
		t.Errorf("abort of an unknown xid: %+v, %v", o, err)
	}
}

func TestFullSpillStopsLoudly(t *testing.T) {
	s := open(t, 1, 100)
	_, err := s.Offer(1, start(7, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err = s.Offer(pgoutput.LSN(2+i), insert(7, strings.Repeat("x", 20)), nil); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "--spill-max-bytes") {
		t.Fatalf("got %v, want ErrFull naming --spill-max-bytes", err)
	}
	if st := s.Stats(); st.DiskBytes > 100 {
		t.Errorf("%d bytes on disk, over the cap of 100", st.DiskBytes)
	}
	s.Reset()
	if st := s.Stats(); st != (Stats{SpilledBytes: st.SpilledBytes}) {
		t.Errorf("after Reset: %+v", st)
	}
}

// TestQuotaIsShared: bytes others hold in the directory (a message set
// aside by the replication session) count against the same cap, and what
// the spool held is handed back to the quota when it lets go.
func TestQuotaIsShared(t *testing.T) {
	quota := mapped.NewQuota(200)
	s, err := Open(Config{Dir: t.TempDir(), Memory: 1, MaxDisk: 200, Quota: quota})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Offer(1, start(7, true), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Offer(2, insert(7, strings.Repeat("x", 20)), nil); err != nil {
		t.Fatal(err)
	}
	held := s.Stats().DiskBytes
	if held == 0 || quota.Used() != held {
		t.Fatalf("quota used %d, spool on disk %d", quota.Used(), held)
	}
	quota.Add(200 - held - 10) // another writer takes all but 10 bytes
	_, err = s.Offer(3, insert(7, strings.Repeat("y", 20)), nil)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "--spill-max-bytes") {
		t.Fatalf("got %v, want ErrFull naming --spill-max-bytes", err)
	}
	s.Reset()
	if quota.Used() != 200-held-10 {
		t.Fatalf("quota used %d after Reset, want the other writer's %d", quota.Used(), 200-held-10)
	}
}

func TestUnwritableDirectoryIsRefusedAtOpen(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: filepath.Join(file, "spill")})
	if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "--spill-dir") {
		t.Fatalf("got %v, want a refusal naming the directory and --spill-dir", err)
	}
	if _, err := Open(Config{}); err == nil {
		t.Fatal("an empty directory was accepted")
	}
}

func TestSpillFilesLeaveNothingBehind(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, Memory: 1})
	if err != nil {
		t.Fatal(err)
	}
	feed(t, s, start(7, true), insert(7, "x"), stop())
	if st := s.Stats(); st.DiskBytes == 0 {
		t.Fatal("nothing spilled")
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("spill directory holds %v (%v): files must be unlinked", entries, err)
	}
	s.Reset()
}

func TestProtocolViolations(t *testing.T) {
	for name, msgs := range map[string][][]byte{
		"block in a block":       {start(7, true), start(8, true)},
		"later block first":      {start(7, false)},
		"first block twice":      {start(7, true), stop(), start(7, true)},
		"stop outside a block":   {stop()},
		"commit inside a block":  {start(7, true), commit(7, 1)},
		"commit of nothing":      {commit(7, 1)},
		"abort inside a block":   {start(7, true), abort(7, 7)},
		"BEGIN inside a block":   {start(7, true), pgoutputtest.Begin(1, 7)},
		"malformed stream start": {newMsg('S').U32(1)},
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t, 0, 0)
			var err error
			for i, m := range msgs {
				if _, err = s.Offer(pgoutput.LSN(i), m, nil); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, pgoutput.ErrMalformedMessage) {
				t.Fatalf("got %v, want a protocol error", err)
			}
		})
	}
}

// FuzzSpool drives a spool with a sequence of stream operations chosen by
// the input and holds its replays to a model: every committed transaction
// gives exactly its changes not under an aborted subtransaction, in order,
// whatever the memory bound made spill.
func FuzzSpool(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 0, 5, 3, 4}, int64(1))
	f.Add([]byte{0, 1, 9, 2, 10, 0, 11, 1, 6, 2, 4, 4}, int64(40))
	f.Fuzz(func(t *testing.T, ops []byte, memory int64) {
		if memory < 0 || memory > 1<<20 {
			return
		}
		s, err := Open(Config{Dir: t.TempDir(), Memory: memory})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Reset()
		type mtx struct {
			rows    []string
			subOf   []uint32
			aborted map[uint32]bool
		}
		model := map[uint32]*mtx{}
		var cur uint32 // 0: outside a block
		lsn := pgoutput.LSN(0)
		offer := func(m []byte) Outcome {
			lsn++
			out, err := s.Offer(lsn, m, nil)
			if err != nil {
				t.Fatalf("Offer(%q): %v", m[0], err)
			}
			return out
		}
		for i, op := range ops {
			xid := uint32(100 + op%3) // three top-level transactions
			switch op / 3 % 5 {
			case 0: // a block starts, or the open one goes on
				if cur == 0 {
					_, open := model[xid]
					offer(start(xid, !open))
					if !open {
						model[xid] = &mtx{aborted: map[uint32]bool{}}
					}
					cur = xid
				}
				fallthrough
			case 1: // a change, as the transaction or one of two subtransactions
				if cur != 0 {
					sub := cur
					if i%3 > 0 {
						sub = cur*10 + uint32(i%3)
					}
					row := fmt.Sprint(i)
					offer(insert(sub, row))
					model[cur].rows = append(model[cur].rows, row)
					model[cur].subOf = append(model[cur].subOf, sub)
				}
			case 2: // the block stops
				if cur != 0 {
					offer(stop())
					cur = 0
				}
			case 3: // commit
				if m, open := model[xid]; open && cur == 0 {
					out := offer(commit(xid, uint64(lsn)))
					if out.Replay == nil {
						t.Fatalf("commit of xid %d gave no replay", xid)
					}
					var want []string
					for j, row := range m.rows {
						if !m.aborted[m.subOf[j]] {
							want = append(want, row)
						}
					}
					if got := drain(t, out.Replay); !slices.Equal(got, want) {
						t.Fatalf("xid %d replayed %q, want %q", xid, got, want)
					}
					delete(model, xid)
				}
			case 4: // abort of a subtransaction, or of the whole
				if m, open := model[xid]; open && cur == 0 {
					sub := xid*10 + uint32(i%3)
					if i%3 == 0 {
						sub = xid
					}
					offer(abort(xid, sub))
					if sub == xid {
						delete(model, xid)
					} else {
						m.aborted[sub] = true
					}
				}
			}
			if st := s.Stats(); st.MemoryBytes < 0 || st.DiskBytes < 0 || st.Open != len(model) ||
				(memory > 0 && st.MemoryBytes > memory && st.MemoryBytes > 256) {
				t.Fatalf("after op %d: %+v with %d open in the model, memory bound %d", i, st, len(model), memory)
			}
		}
	})
}

// TestBigRecordReplayedMapped: a record over bigRecord goes to the file in
// pieces, each handed back once written, even when memory would hold it,
// and is replayed whole and exact (mapped from the file) between the
// records around it, its pages handed back as the caller goes.
func TestBigRecordReplayedMapped(t *testing.T) {
	s := open(t, 1<<30, 0)
	big := strings.Repeat("é0123456789abcdef", (3*bigRecord)/18+7)
	msg := insert(7, big)
	var pieces []byte
	out, err := s.Offer(1, start(7, true), nil)
	if err != nil || out.Event != Opened {
		t.Fatalf("got %v %v", out, err)
	}
	for i, m := range [][]byte{insert(7, "before"), msg, insert(7, "after")} {
		var release func([]byte)
		if len(m) > bigRecord {
			release = func(p []byte) {
				if len(p) > bigRecord {
					t.Fatalf("a piece of %d bytes", len(p))
				}
				pieces = append(pieces, p...)
			}
		}
		if _, err := s.Offer(pgoutput.LSN(2+i), m, release); err != nil {
			t.Fatal(err)
		}
	}
	if string(pieces) != string(msg) {
		t.Fatalf("handed back %d bytes, the record has %d", len(pieces), len(msg))
	}
	if st := s.Stats(); st.DiskBytes == 0 || st.MemoryBytes != 0 {
		t.Fatalf("stats %+v: the transaction with a big record is to be on disk", st)
	}
	replays, _ := feed(t, s, stop(), commit(7, 0x70))
	if len(replays) != 1 {
		t.Fatalf("%d replays", len(replays))
	}
	r := replays[0]
	defer r.Close()
	var rows []string
	for {
		_, data, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > bigRecord {
			r.Release(data) // dropped pages read back from the file
		}
		rows = append(rows, rowOf(t, data))
	}
	if len(rows) != 3 || rows[0] != "before" || rows[1] != big || rows[2] != "after" {
		t.Fatalf("replayed %d rows; want before, the big row, after", len(rows))
	}
}
