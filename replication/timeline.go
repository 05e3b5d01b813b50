package replication

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// ErrNotInHistory says a timeline is not an ancestor of the server's: the
// server's history does not pass through it (a restore onto another branch).
var ErrNotInHistory = errors.New("not in the server's timeline history")

// TimelineSwitch is one line of a timeline history file: timeline Parent
// ended at Switch, where its successor began.
type TimelineSwitch struct {
	Parent int32
	Switch pgoutput.LSN
}

// ParseTimelineHistory reads a timeline history file ("<parent TLI>
// <switch point> <reason>" per line; blank lines and '#' comments are
// skipped), as TIMELINE_HISTORY returns it.
func ParseTimelineHistory(content []byte) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	sc := bufio.NewScanner(bytes.NewReader(content))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("timeline history line %d: %q has no switch point", n, line)
		}
		tli, err := strconv.ParseInt(f[0], 10, 32)
		if err != nil || tli <= 0 {
			return nil, fmt.Errorf("timeline history line %d: bad timeline %q", n, f[0])
		}
		at, err := pgoutput.ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history line %d: %w", n, err)
		}
		out = append(out, TimelineSwitch{Parent: int32(tli), Switch: at})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the timeline history: %w", err)
	}
	return out, nil
}

// SwitchPointOf is where timeline tli ended in history: the first position
// that is not part of the shared WAL. ok is false when tli is not an
// ancestor in history.
func SwitchPointOf(history []TimelineSwitch, tli int32) (at pgoutput.LSN, ok bool) {
	for _, s := range history {
		if s.Parent == tli {
			return s.Switch, true
		}
	}
	return 0, false
}

// SwitchPoint asks the server where timeline tli ended in the history of
// the server's current timeline: WAL before it is shared with tli, WAL from
// it on is this server's own. A failover slot continuing on a promoted
// standby uses it to find out whether events delivered from the old primary
// lie beyond the promotion (a fork of the history).
func (s *Session) SwitchPoint(ctx context.Context, tli int32) (pgoutput.LSN, error) {
	if tli >= s.Timeline {
		return 0, fmt.Errorf("timeline %d is not an ancestor of the server's timeline %d: %w", tli, s.Timeline, ErrNotInHistory)
	}
	res, err := pglogrepl.TimelineHistory(ctx, s.conn, s.Timeline)
	if err != nil {
		return 0, Explain(fmt.Errorf("reading the history of timeline %d: %w", s.Timeline, err))
	}
	history, err := ParseTimelineHistory(res.Content)
	if err != nil {
		return 0, err
	}
	at, ok := SwitchPointOf(history, tli)
	if !ok {
		return 0, fmt.Errorf("timeline %d is not in the history of the server's timeline %d (%s): %w", tli, s.Timeline, res.FileName, ErrNotInHistory)
	}
	return at, nil
}
