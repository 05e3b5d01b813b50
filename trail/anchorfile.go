package trail

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// anchorLine is one line of an anchor file: a seal's head.
type anchorLine struct {
	Chain    string `json:"chain"`
	Seq      uint64 `json:"seq"`
	Hash     string `json:"hash"`
	To       string `json:"to"`
	ToKey    string `json:"to_key"`
	Total    uint64 `json:"total"`
	SystemID string `json:"system_identifier"`
	Slot     string `json:"slot"`
}

// AppendAnchor appends a's head to the anchor file at path (created when
// missing, opened for appending only) and syncs it: a copy of the trail's
// head somewhere the spine's host does not control.
func AppendAnchor(path string, a Anchor) error {
	line, err := json.Marshal(anchorLine{Chain: a.Chain, Seq: a.Seq, Hash: a.Hash, To: a.To.String(), ToKey: a.ToKey,
		Total: a.Total, SystemID: a.SystemID, Slot: a.Slot})
	if err != nil {
		return fmt.Errorf("BUG: encoding an anchor: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("opening the anchor file: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("appending to the anchor file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing the anchor file: %w", err)
	}
	return f.Close()
}

// LastAnchor reads the newest anchor of an anchor file (the line with the
// highest seq). ok is false for an empty file.
func LastAnchor(path string) (a Anchor, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return Anchor{}, false, fmt.Errorf("reading the anchor file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		var l anchorLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return Anchor{}, false, fmt.Errorf("anchor file %s, line %d: %w", path, n, err)
		}
		to, pok := envelope.ParsePosition(l.To)
		if !pok || l.Seq == 0 {
			return Anchor{}, false, fmt.Errorf("anchor file %s, line %d: %w", path, n, errors.New("not an anchor"))
		}
		if l.Seq > a.Seq {
			a = Anchor{Chain: l.Chain, Seq: l.Seq, Hash: l.Hash, To: to, ToKey: l.ToKey, Total: l.Total, SystemID: l.SystemID, Slot: l.Slot}
			ok = true
		}
	}
	if err := sc.Err(); err != nil {
		return Anchor{}, false, fmt.Errorf("reading the anchor file: %w", err)
	}
	return a, ok, nil
}
