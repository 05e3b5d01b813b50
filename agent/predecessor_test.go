package agent

import (
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// TestPredecessorCountsDeadLetters: the first event replayed names the last
// event before the replay as its predecessor, as when it was first built,
// whether that event is in the spine or was kept as a dead letter.
func TestPredecessorCountsDeadLetters(t *testing.T) {
	pos := func(lsn pgoutput.LSN, seq uint32) envelope.Position {
		return envelope.Position{CommitLSN: lsn, Seq: seq}
	}
	key := func(p envelope.Position) string { return envelope.Key("7301", "slot", p) }
	delivered := pos(0x100, 3)
	tests := []struct {
		name string
		dead []string
		want envelope.Position
	}{
		{"no dead letters", nil, delivered},
		{"a dead letter after the last delivered, before the replay", []string{key(pos(0x200, 1)), key(pos(0x200, 2))}, pos(0x200, 2)},
		{"an older dead letter", []string{key(pos(0x80, 1))}, delivered},
		{"a dead letter of the replayed transaction", []string{key(pos(0x300, 1))}, delivered},
		{"another identity's key", []string{envelope.Key("7301", "other", pos(0x200, 1)), "not a key"}, delivered},
	}
	for _, tt := range tests {
		if got := predecessor(delivered, tt.dead, "7301", "slot", 0x300); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
