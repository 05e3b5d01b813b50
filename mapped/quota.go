package mapped

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrFull is wrapped when a file does not fit in its directory: over its
// Quota, or the file system full.
var ErrFull = errors.New("spill directory full")

// Quota is the room the files of one directory may take, shared by
// everything that writes there: one cap for all of them, however the
// bytes are split between writers. It is safe for concurrent use.
type Quota struct {
	max  int64
	used atomic.Int64
}

// NewQuota returns a quota of max bytes.
func NewQuota(max int64) *Quota { return &Quota{max: max} }

// Fits reports whether n more bytes stay within the quota now.
func (q *Quota) Fits(n int64) bool { return q.used.Load()+n <= q.max }

// TryAdd counts n more bytes in use if they stay within the quota, and
// reports whether it did: the check and the count are one step.
func (q *Quota) TryAdd(n int64) bool {
	for {
		used := q.used.Load()
		if used+n > q.max {
			return false
		}
		if q.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Add counts n more bytes in use (n < 0: handed back).
func (q *Quota) Add(n int64) { q.used.Add(n) }

// Used is the bytes in use.
func (q *Quota) Used() int64 { return q.used.Load() }

// Max is the quota.
func (q *Quota) Max() int64 { return q.max }

// Refused is the error of what (a transaction, a message) needing more
// room in dir than q leaves: one sentence, for every writer sharing the
// quota, naming the flag that sets it and the fix.
func (q *Quota) Refused(what, dir string) error {
	return fmt.Errorf("%w: %s needs more than the %d bytes --spill-max-bytes allows in %s (%d in use, a large row set aside as it arrived included): raise --spill-max-bytes above the largest transaction plus its largest row (or free the disk) and restart; nothing past it was confirmed, so it is streamed again",
		ErrFull, what, q.max, dir, q.Used())
}
