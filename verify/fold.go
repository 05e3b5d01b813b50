package verify

import (
	"fmt"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

func (v *Verifier) table(name string) *tableState {
	t := v.tables[name]
	if t == nil {
		t = &tableState{rows: map[[32]byte]int{}}
		v.tables[name] = t
	}
	return t
}

// restart empties the fold after a declared gap: the table's state is
// re-established by its backfill (READ events).
func (t *tableState) restart() {
	t.rows, t.n, t.rebase, t.broken = map[[32]byte]int{}, 0, true, ""
}

func (t *tableState) add(row any) error {
	h, err := ValueHash(row)
	if err != nil {
		return err
	}
	t.rows[h]++
	t.n++
	return nil
}

// remove takes one row out; false when the row is not in the fold (it was
// never seen: a change made while auditing was bypassed, or a row older
// than the watch with no backfill).
func (t *tableState) remove(row any) (bool, error) {
	h, err := ValueHash(row)
	if err != nil {
		return false, err
	}
	if t.rows[h] == 0 {
		return false, nil
	}
	t.rows[h]--
	if t.rows[h] == 0 {
		delete(t.rows, h)
	}
	t.n--
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
		err = t.add(newRow)
	case "UPDATE", "DELETE":
		if oldRow != nil && !keyOnly {
			var ok bool
			if ok, err = t.remove(oldRow); err == nil && !ok {
				t.unseen++
				if t.firstUnseen == 0 {
					t.firstUnseen = e.EventID
				}
			}
		}
		if err == nil && op == "UPDATE" {
			err = t.add(newRow)
		}
	case "TRUNCATE":
		t.rows, t.n = map[[32]byte]int{}, 0
	case "READ":
		// A backfilled row: the state at the chunk's place in commit order.
		// One already folded is the same row; one not folded yet completes
		// the baseline.
		var h [32]byte
		if h, err = ValueHash(newRow); err == nil && t.rows[h] == 0 {
			t.rows[h]++
			t.n++
		}
	case "CHECKPOINT":
		v.compare(e, t, table)
	}
	if err != nil && t.broken == "" {
		t.broken = fmt.Sprintf("event %d has a row that cannot be hashed: %v", e.EventID, err)
	}
}

func (v *Verifier) compare(e chain.Event, t *tableState, table string) {
	v.report.Checkpoints++
	cp, _ := e.Payload["checkpoint"].(map[string]any)
	wantRows := intOf(cp["rows"])
	wantDigest, _ := cp["digest"].(string)
	d := t.digest()
	if int64(wantRows) == d.Rows && wantDigest == d.Hex() {
		t.rebase = false
		return
	}
	known := ""
	if t.rebase {
		known = "a declared gap covers this table and its backfill is not complete yet"
	}
	detail := fmt.Sprintf("checkpoint %v of %s (event %d): PostgreSQL had %d rows (digest %s), the audit trail folds to %d rows (digest %s)",
		cp["id"], table, e.EventID, wantRows, shortHash(wantDigest), d.Rows, shortHash(d.Hex()))
	switch {
	case t.broken != "":
		detail += "; " + t.broken
	case t.unseen > 0:
		detail += fmt.Sprintf("; %d UPDATE/DELETE events (the first is event %d) changed rows the trail never showed: changes made while auditing was bypassed (session_replication_role = replica, or while the table was unwatched), or rows older than the watch without a backfill", t.unseen, t.firstUnseen)
	default:
		detail += "; rows differ that no event explains: changes made while auditing was bypassed, or rows older than the watch without a backfill (run pgaudit-cdc backfill, then checkpoint again)"
	}
	v.fail(CheckFaithfulness, e.EventID, known, "%s", detail)
}
