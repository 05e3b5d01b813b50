package confirm

import (
	"sync/atomic"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Tracker is the confirm rule of one replication session (see the package
// documentation). Its zero value starts at LSN 0; use New to start at the
// slot's position.
type Tracker struct {
	accepted atomic.Uint64
	recorded atomic.Uint64
}

// New returns a Tracker whose accepted and recorded positions are both
// start: the slot's confirmed_flush_lsn, which the caller must already have
// recorded as progress (capture.SaveProgress).
func New(start pgoutput.LSN) *Tracker {
	t := &Tracker{}
	t.accepted.Store(uint64(start))
	t.recorded.Store(uint64(start))
	return t
}

// Accept raises the accepted position to lsn: everything up to lsn was
// accepted by the destination or stored as a dead letter, or lsn is a
// keepalive position with nothing pending before it. The position never
// goes back: a lower or equal lsn leaves it as it is. Accept reports
// whether it raised the position.
func (t *Tracker) Accept(lsn pgoutput.LSN) bool {
	return raise(&t.accepted, lsn)
}

// Accepted is the accepted position.
func (t *Tracker) Accepted() pgoutput.LSN {
	return pgoutput.LSN(t.accepted.Load())
}

// NeedsRecord returns the accepted position, and whether it is more than
// slack beyond the recorded one: then it should be saved as the slot's
// progress, and reported with Recorded, before it can be confirmed. A slack
// of zero asks for a record whenever anything accepted is not recorded yet.
func (t *Tracker) NeedsRecord(slack pgoutput.LSN) (pgoutput.LSN, bool) {
	accepted := t.Accepted()
	return accepted, accepted > t.LastRecorded()+slack
}

// Recorded raises the recorded position to lsn, once lsn has been saved as
// the slot's progress. Like the record in the database, it never goes back.
func (t *Tracker) Recorded(lsn pgoutput.LSN) {
	raise(&t.recorded, lsn)
}

// LastRecorded is the recorded position.
func (t *Tracker) LastRecorded() pgoutput.LSN {
	return pgoutput.LSN(t.recorded.Load())
}

// Confirmable is the position that may be sent to the server as the flush
// position: min(accepted, recorded), never beyond either. It never goes
// back, since both only rise.
func (t *Tracker) Confirmable() pgoutput.LSN {
	return min(t.Accepted(), t.LastRecorded())
}

// raise sets p to lsn when lsn is higher, and reports whether it did.
func raise(p *atomic.Uint64, lsn pgoutput.LSN) bool {
	for {
		cur := p.Load()
		if uint64(lsn) <= cur {
			return false
		}
		if p.CompareAndSwap(cur, uint64(lsn)) {
			return true
		}
	}
}
