package verify

import (
	"fmt"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

func (v *Verifier) table(name string) *tableState {
	t := v.tables[name]
	if t == nil {
		t = &tableState{rows: map[[32]byte]int{}, cps: map[string]*cpState{}}
		v.tables[name] = t
	}
	return t
}

// restart empties the fold after a declared gap (gap names it): the
// table's state is re-established by its backfill (READ events).
func (t *tableState) restart(gap string) {
	t.rows, t.n, t.rebase, t.broken, t.gap = map[[32]byte]int{}, 0, true, "", gap
	t.ix.emptied()
	t.cps = map[string]*cpState{}
}

// add folds in a row that event at added.
func (t *tableState) add(row any, at int64) error {
	h, c, err := canonicalHash(row)
	if err != nil {
		return err
	}
	t.addHashed(row, h, c, at)
	return nil
}

func (t *tableState) addHashed(row any, h [32]byte, canon []byte, at int64) {
	t.rows[h]++
	t.n++
	t.ix.added(row, h, canon, at)
}

// remove takes one row out; false when the row is not in the fold (it was
// never seen: a change made while auditing was bypassed, or a row older
// than the watch with no backfill). deleted: a DELETE, not an UPDATE's old
// row.
func (t *tableState) remove(row any, deleted bool) (bool, error) {
	h, err := ValueHash(row)
	if err != nil {
		return false, err
	}
	if t.rows[h] == 0 {
		t.ix.seeRow(row) // its key was in the trail, to name it
		return false, nil
	}
	t.rows[h]--
	last := t.rows[h] == 0
	if last {
		delete(t.rows, h)
	}
	t.n--
	t.ix.removed(row, h, last, deleted)
	return true, nil
}

func (t *tableState) digest() Digest {
	var d Digest
	for h, c := range t.rows {
		for i := 0; i < c; i++ {
			d.AddHash(h)
		}
	}
	return d
}

// fold applies one of the agent's events to its table's state, and
// compares a CHECKPOINT with it.
func (v *Verifier) fold(e chain.Event, op, gen, table string) {
	meta, _ := e.Payload["metadata"].(map[string]any)
	keyOnly, _ := meta["old_is_key_only"].(bool)
	switch op {
	case "INSERT", "UPDATE", "DELETE", "TRUNCATE", "READ", "CHECKPOINT":
	default:
		return
	}
	t := v.table(gen + "|" + table)
	oldRow, newRow := e.Payload["old"], e.Payload["new"]
	if (op == "UPDATE" || op == "DELETE") && keyOnly {
		if t.broken == "" {
			t.broken = fmt.Sprintf("from event %d on, old rows of %s are key-only (old_is_key_only): its replica identity is not FULL, so its state cannot be folded", e.EventID, table)
			if t.sawFullOld && !t.columnList {
				v.fail(CheckFaithfulness, e.EventID, "", "the replica identity of %s was weakened: event %d carries a key-only old row after full ones", table, e.EventID)
			}
		}
	}
	if (op == "UPDATE" || op == "DELETE") && !keyOnly && oldRow != nil {
		t.sawFullOld = true
	}
	var err error
	switch op {
	case "INSERT":
		err = t.add(newRow, e.EventID)
	case "UPDATE", "DELETE":
		if oldRow != nil && !keyOnly {
			var ok bool
			if ok, err = t.remove(oldRow, op == "DELETE"); err == nil && !ok {
				t.unseen++
				if t.firstUnseen == 0 {
					t.firstUnseen = e.EventID
				}
			}
		}
		if err == nil && op == "UPDATE" {
			err = t.add(newRow, e.EventID)
		}
	case "TRUNCATE":
		t.rows, t.n = map[[32]byte]int{}, 0
		t.ix.emptied()
	case "READ":
		// A backfilled row: the state at the chunk's place in commit order.
		// One already folded is the same row; one not folded yet completes
		// the baseline.
		var h [32]byte
		var c []byte
		if h, c, err = canonicalHash(newRow); err == nil && t.rows[h] == 0 {
			t.addHashed(newRow, h, c, e.EventID)
		}
	case "CHECKPOINT":
		v.compare(e, t, table)
	}
	if err != nil && t.broken == "" {
		t.broken = fmt.Sprintf("event %d has a row that cannot be hashed: %v", e.EventID, err)
	}
}
