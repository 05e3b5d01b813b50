package confirm

import (
	"sync"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// step is one call on a Tracker in a table-driven sequence.
type step struct {
	accept   pgoutput.LSN // Accept(accept) when non-zero
	record   bool         // NeedsRecord(slack), then Recorded when due
	slack    pgoutput.LSN
	recorded pgoutput.LSN // Recorded(recorded) when non-zero
}

func TestTracker(t *testing.T) {
	tests := []struct {
		name            string
		start           pgoutput.LSN
		steps           []step
		wantAccepted    pgoutput.LSN
		wantRecorded    pgoutput.LSN
		wantConfirmable pgoutput.LSN
	}{
		{"fresh: the slot's position is accepted and recorded", 0x100, nil, 0x100, 0x100, 0x100},
		{"accepted but not recorded is not confirmable", 0x100, []step{{accept: 0x200}}, 0x200, 0x100, 0x100},
		{"accepted and recorded is confirmable", 0x100, []step{{accept: 0x200}, {record: true}}, 0x200, 0x200, 0x200},
		{"within the slack nothing is recorded", 0x100, []step{{accept: 0x300}, {record: true, slack: 0x200}}, 0x300, 0x100, 0x100},
		{"beyond the slack it is recorded", 0x100, []step{{accept: 0x301}, {record: true, slack: 0x200}}, 0x301, 0x301, 0x301},
		{"a later record without slack catches up", 0x100,
			[]step{{accept: 0x150}, {record: true, slack: 512}, {record: true}}, 0x150, 0x150, 0x150},
		{"accepted never goes back", 0x100, []step{{accept: 0x300}, {accept: 0x200}, {record: true}}, 0x300, 0x300, 0x300},
		{"accepting the same position again changes nothing", 0x100, []step{{accept: 0x100}}, 0x100, 0x100, 0x100},
		{"recorded never goes back", 0x100, []step{{recorded: 0x400}, {recorded: 0x200}}, 0x100, 0x400, 0x100},
		{"recorded beyond accepted confirms only what was accepted", 0x100,
			[]step{{recorded: 0x400}, {accept: 0x300}}, 0x300, 0x400, 0x300},
		{"accepted after the last record: confirmable stays at the record", 0x100,
			[]step{{accept: 0x200}, {record: true}, {accept: 0x900}, {record: true, slack: 0x1000}}, 0x900, 0x200, 0x200},
		{"zero value starts at zero", 0, []step{{accept: 0x10}}, 0x10, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(tt.start)
			if tt.start == 0 {
				tr = &Tracker{}
			}
			for _, s := range tt.steps {
				if s.accept != 0 {
					tr.Accept(s.accept)
				}
				if s.record {
					if lsn, due := tr.NeedsRecord(s.slack); due {
						tr.Recorded(lsn)
					}
				}
				if s.recorded != 0 {
					tr.Recorded(s.recorded)
				}
			}
			if got := tr.Accepted(); got != tt.wantAccepted {
				t.Errorf("Accepted: got %s, want %s", got, tt.wantAccepted)
			}
			if got := tr.LastRecorded(); got != tt.wantRecorded {
				t.Errorf("LastRecorded: got %s, want %s", got, tt.wantRecorded)
			}
			if got := tr.Confirmable(); got != tt.wantConfirmable {
				t.Errorf("Confirmable: got %s, want %s", got, tt.wantConfirmable)
			}
		})
	}
}

func TestAcceptReportsARaise(t *testing.T) {
	tests := []struct {
		name string
		lsn  pgoutput.LSN
		want bool
	}{
		{"higher", 0x101, true},
		{"equal", 0x100, false},
		{"lower", 0xff, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(0x100)
			if got := tr.Accept(tt.lsn); got != tt.want {
				t.Errorf("Accept(%s): got %t, want %t", tt.lsn, got, tt.want)
			}
		})
	}
}

func TestNeedsRecord(t *testing.T) {
	tests := []struct {
		name     string
		accepted pgoutput.LSN
		slack    pgoutput.LSN
		wantLSN  pgoutput.LSN
		wantDue  bool
	}{
		{"nothing new", 0x1000, 0, 0x1000, false},
		{"one byte, no slack", 0x1001, 0, 0x1001, true},
		{"exactly the slack ahead", 0x1000 + 512, 512, 0x1000 + 512, false},
		{"one byte more than the slack", 0x1000 + 513, 512, 0x1000 + 513, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(0x1000)
			tr.Accept(tt.accepted)
			lsn, due := tr.NeedsRecord(tt.slack)
			if lsn != tt.wantLSN || due != tt.wantDue {
				t.Errorf("NeedsRecord(%d): got %s, %t, want %s, %t", tt.slack, lsn, due, tt.wantLSN, tt.wantDue)
			}
			if got := tr.LastRecorded(); got != 0x1000 {
				t.Errorf("LastRecorded after NeedsRecord: got %s, want %s", got, pgoutput.LSN(0x1000))
			}
		})
	}
}

// TestConcurrentAcceptAndConfirm plays the publisher accepting positions
// while the reader records and confirms them (run it with -race): what the
// reader confirms never passes what was accepted before it looked, nor what
// it recorded, and never goes back.
func TestConcurrentAcceptAndConfirm(t *testing.T) {
	const start, last = 0x1000, 0x1000 + 20000
	tr := New(start)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the publisher
		defer wg.Done()
		for lsn := pgoutput.LSN(start + 1); lsn <= last; lsn++ {
			tr.Accept(lsn)
			if lsn%7 == 0 {
				tr.Accept(lsn - 3) // a lower position changes nothing
			}
		}
	}()
	var prev pgoutput.LSN
	check := func(slack pgoutput.LSN) {
		if lsn, due := tr.NeedsRecord(slack); due {
			tr.Recorded(lsn)
		}
		c := tr.Confirmable()
		if accepted := tr.Accepted(); c > accepted {
			t.Fatalf("Confirmable: got %s, want at most the accepted %s", c, accepted)
		}
		if recorded := tr.LastRecorded(); c > recorded {
			t.Fatalf("Confirmable: got %s, want at most the recorded %s", c, recorded)
		}
		if c < prev {
			t.Fatalf("Confirmable: got %s, want at least the earlier %s", c, prev)
		}
		prev = c
	}
	for tr.Accepted() < last {
		check(512)
	}
	wg.Wait()
	check(0)
	if prev != last {
		t.Fatalf("Confirmable at the end: got %s, want %s", prev, pgoutput.LSN(last))
	}
}
