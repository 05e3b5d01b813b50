package preflight

import (
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// TestSlotCheck: the "slot" check never offers to create a slot that is
// missing after capture started, nor to drop an invalidated one: both are
// gaps, and the way past one is `run --accept-gap`.
func TestSlotCheck(t *testing.T) {
	ours := replication.SlotInfo{Exists: true, Plugin: "pgoutput", Database: "app", ConfirmedFlushLSN: 0x1000, WALStatus: "reserved"}
	lost := ours
	lost.WALStatus, lost.InvalidationReason = "lost", "wal_removed"
	pending := &capture.GapRecord{ID: 7, Reason: capture.ReasonSlotMissing, Tables: []string{"public.t1"}}
	gap := captureView{schema: true, checked: true, a: capture.Assessment{Verdict: capture.Gap, Reason: capture.ReasonSlotMissing}}
	fresh := captureView{schema: true, checked: true, a: capture.Assessment{Verdict: capture.Create}}
	tests := []struct {
		name       string
		slot       replication.SlotInfo
		inRecovery bool
		cv         captureView
		want       Status
		words      []string
		not        []string
	}{
		{"nothing captured yet", replication.SlotInfo{}, false, captureView{}, OK, []string{"will be created"}, nil},
		{"nothing captured yet, schema exists", replication.SlotInfo{}, false, fresh, OK, []string{"will be created"}, nil},
		{"missing after capture started", replication.SlotInfo{}, false, gap, Fail,
			[]string{"missing although capture started", "pgaudit-cdc run", "--accept-gap=ID", "backfill"}, []string{"will be created", "pg_drop_replication_slot", "watch again"}},
		{"missing, gap pending", replication.SlotInfo{}, false, captureView{schema: true, pending: pending}, Fail,
			[]string{"gap #7 is pending", "--accept-gap=7", "public.t1"}, []string{"will be created"}},
		{"missing, capture state unreadable", replication.SlotInfo{}, false, captureView{schema: true, err: errSample}, Warn,
			[]string{"capture continuity"}, []string{"will be created"}},
		{"invalidated", lost, false, captureView{schema: true, checked: true, a: capture.Assessment{Verdict: capture.Gap, Reason: capture.ReasonSlotInvalidated}}, Fail,
			[]string{"invalidated (wal_removed)", "changes were lost", "--accept-gap=ID", "drops the invalidated slot", "max_slot_wal_keep_size"}, []string{"pg_drop_replication_slot", "watch again"}},
		{"invalidated, gap pending", lost, false, captureView{schema: true, pending: &capture.GapRecord{ID: 3, Tables: []string{"public.t1"}}}, Fail,
			[]string{"--accept-gap=3", "drops the invalidated slot"}, []string{"pg_drop_replication_slot"}},
		{"another plugin", replication.SlotInfo{Exists: true, Plugin: "wal2json", Database: "app"}, false, captureView{}, Fail,
			[]string{"wal2json", "choose another --slot"}, nil},
		{"in use", func() replication.SlotInfo { s := ours; s.Active, s.ActivePID = true, 42; return s }(), false, captureView{}, OK, []string{"PID 42"}, nil},
		{"idle", ours, false, captureView{}, OK, []string{"no agent connected"}, nil},
		{"on a standby, no copy", replication.SlotInfo{}, true, captureView{schema: true}, OK, []string{"standby", "synced slot"}, []string{"will be created"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := slotCheck("pgaudit_cdc", "app", 170000, tt.slot, tt.inRecovery, tt.cv)
			text := r.Detail + " fix: " + r.Fix
			if r.Status != tt.want {
				t.Fatalf("status %s, want %s: %s", r.Status, tt.want, text)
			}
			for _, w := range tt.words {
				if !strings.Contains(text, w) {
					t.Errorf("%q lacks %q", text, w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(text, w) {
					t.Errorf("%q says %q", text, w)
				}
			}
		})
	}
}

var errSample = sampleError("permission denied")

type sampleError string

func (e sampleError) Error() string { return string(e) }
