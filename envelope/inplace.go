package envelope

import "bytes"

// inPlace is a large event's rows, built in the buffer its Body will be:
// room for what comes before the first row (buf[:start]), then the rows in
// the order Body holds them (new, then old, with what lies between), then
// room for what comes after. Finish then encodes the event around the rows
// instead of copying them: an event of hundreds of megabytes otherwise
// needs them twice at once (BuildRowsInPlace).
type inPlace struct {
	buf                          []byte
	newAt, newEnd, oldAt, oldEnd int // -1 when the row is absent
}

// BuildRowsInPlace builds the event's rows with buildNew and buildOld (nil:
// the row is absent), each appending one JSON object to the buffer it is
// given, in the buffer Finish will encode the event into. size estimates
// the rows' bytes; room is what the envelope may still grow by before its
// first row once they are built (unavailable columns, tx_events). Finish
// copies the rows after all when they were replaced, or the room was too
// small: the Body is the same either way.
func (ev *Event) BuildRowsInPlace(size, room int, buildNew, buildOld func([]byte) []byte) {
	sk, at := ev.skeleton(buildNew != nil, buildOld != nil)
	first := at.newAt
	if first < 0 {
		first = at.oldAt
	}
	start := first + room + 64
	p := &inPlace{newAt: -1, newEnd: -1, oldAt: -1, oldEnd: -1}
	b := make([]byte, start, start+size+len(sk)-first+room+64)
	if buildNew != nil {
		p.newAt = len(b)
		b = buildNew(b)
		p.newEnd = len(b)
		if buildOld != nil {
			b = append(b, sk[at.newAt:at.oldAt]...)
		}
	}
	if buildOld != nil {
		p.oldAt = len(b)
		b = buildOld(b)
		p.oldEnd = len(b)
	}
	p.buf = b
	ev.New, ev.Old = p.row(p.newAt, p.newEnd), p.row(p.oldAt, p.oldEnd)
	ev.inPlace = p
}

func (p *inPlace) row(at, end int) []byte {
	if at < 0 {
		return nil
	}
	return p.buf[at:end:end]
}

// skeleton encodes the envelope with each present row empty, to find what
// surrounds the rows.
func (ev *Event) skeleton(withNew, withOld bool) ([]byte, spans) {
	e := ev.Envelope
	e.New, e.Old = nil, nil
	if withNew {
		e.New = []byte{}
	}
	if withOld {
		e.Old = []byte{}
	}
	return e.appendJSON(make([]byte, 0, e.Size()))
}

// finishInPlace encodes the event around its rows built in place, and
// reports whether it could: the rows are still the ones built there, the
// room before them sufficed, and what lies between them is unchanged.
func (ev *Event) finishInPlace() bool {
	p := ev.inPlace
	ev.inPlace = nil
	same := func(row []byte, at, end int) bool {
		if at < 0 {
			return row == nil
		}
		return len(row) > 0 && len(row) == end-at && &row[0] == &p.buf[at]
	}
	if !same(ev.New, p.newAt, p.newEnd) || !same(ev.Old, p.oldAt, p.oldEnd) || (ev.New == nil && ev.Old == nil) {
		return false
	}
	sk, at := ev.skeleton(ev.New != nil, ev.Old != nil)
	first, last, firstAt, lastEnd := at.newAt, at.oldAt, p.newAt, p.oldEnd
	if first < 0 {
		first, firstAt = at.oldAt, p.oldAt
	}
	if last < 0 {
		last, lastEnd = at.newAt, p.newEnd
	}
	if first > firstAt || (ev.New != nil && ev.Old != nil && !bytes.Equal(sk[at.newAt:at.oldAt], p.buf[p.newEnd:p.oldAt])) {
		return false
	}
	shift := firstAt - first
	copy(p.buf[shift:firstAt], sk[:first])
	// The room after the rows was reserved, with a byte to spare for a
	// sink's newline; if not, append copies, and the Body is the same.
	ev.Body = append(p.buf[shift:lastEnd], sk[last:]...)
	rows := len(ev.New) + len(ev.Old)
	if ev.New != nil {
		ev.New = ev.Body[first : first+len(ev.New) : first+len(ev.New)]
	}
	if ev.Old != nil {
		oldAt := p.oldAt - shift
		ev.Old = ev.Body[oldAt : oldAt+len(ev.Old) : oldAt+len(ev.Old)]
	}
	ev.payloadAt, ev.payloadEnd = at.payloadAt, at.payloadEnd+rows
	return true
}
