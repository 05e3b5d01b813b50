package capture

import (
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

func TestAssess(t *testing.T) {
	known := State{Known: true, SystemID: "7001", Timeline: 1, StartLSN: 0x100}
	slot := replication.SlotInfo{Exists: true, Plugin: "pgoutput", ConfirmedFlushLSN: 0x500, WALStatus: "reserved"}
	with := func(f func(*Observation)) Observation {
		o := Observation{SystemID: "7001", Timeline: 1, State: known, Slot: slot, Watermark: 0x600, RegistryUsed: true}
		f(&o)
		return o
	}
	tests := []struct {
		name     string
		obs      Observation
		verdict  Verdict
		reason   string
		recreate bool
		moved    bool
	}{
		{"first watch: nothing captured, no slot", Observation{SystemID: "7001", Timeline: 1}, Create, "", false, false},
		{"slot from an older version, no state", with(func(o *Observation) { o.State = State{} }), Adopt, "", false, false},
		{"state lost but watches registered, no slot", with(func(o *Observation) { o.State, o.Slot = State{}, replication.SlotInfo{} }),
			Gap, ReasonNoSlotForWatch, true, false},
		{"continuing", with(func(*Observation) {}), Continue, "", false, false},
		{"watermark unknown after a crash", with(func(o *Observation) { o.Watermark = 0 }), Continue, "", false, false},
		{"slot exactly at the watermark", with(func(o *Observation) { o.Watermark = 0x500 }), Continue, "", false, false},
		{"slot dropped", with(func(o *Observation) { o.Slot = replication.SlotInfo{} }), Gap, ReasonSlotMissing, true, false},
		{"slot lost its WAL", with(func(o *Observation) { o.Slot.WALStatus = "lost" }), Gap, ReasonSlotInvalidated, true, false},
		{"slot invalidated (17+)", with(func(o *Observation) { o.Slot.InvalidationReason = "idle_timeout" }), Gap, ReasonSlotInvalidated, true, false},
		{"invalidated slot without state", with(func(o *Observation) { o.State = State{}; o.Slot.WALStatus = "lost" }), Gap, ReasonSlotInvalidated, true, false},
		{"slot advanced by someone else", with(func(o *Observation) { o.Watermark = 0x400 }), Gap, ReasonSlotAdvanced, false, false},
		{"other cluster", with(func(o *Observation) { o.SystemID = "9999" }), Gap, ReasonSystemChanged, false, false},
		{"other cluster without the slot", with(func(o *Observation) { o.SystemID = "9999"; o.Slot = replication.SlotInfo{} }), Gap, ReasonSystemChanged, true, false},
		{"promoted standby without the slot", with(func(o *Observation) { o.Timeline = 2; o.Slot = replication.SlotInfo{} }), Gap, ReasonTimelineChanged, true, false},
		{"promoted standby, slot not a failover slot", with(func(o *Observation) { o.Timeline = 2 }), Gap, ReasonTimelineChanged, false, false},
		{"promoted standby with a synced failover slot", with(func(o *Observation) { o.Timeline = 2; o.Slot.Failover = true; o.Watermark = 0 }), Continue, "", false, true},
		{"synced failover slot, the chain ends before the switch point", with(func(o *Observation) {
			o.Timeline, o.Slot.Failover, o.Watermark = 2, true, 0
			o.ForkChecked, o.SwitchPoint, o.Delivered = true, 0x700, 0x6f0
		}), Continue, "", false, true},
		{"synced failover slot, nothing delivered yet", with(func(o *Observation) {
			o.Timeline, o.Slot.Failover, o.Watermark = 2, true, 0
			o.ForkChecked, o.SwitchPoint = true, 0x700
		}), Continue, "", false, true},
		{"synced failover slot, the chain holds events past the switch point (fork)", with(func(o *Observation) {
			o.Timeline, o.Slot.Failover, o.Watermark = 2, true, 0
			o.ForkChecked, o.SwitchPoint, o.Delivered = true, 0x700, 0x7a0
		}), Gap, ReasonTimelineForked, false, false},
		{"failover slot on a timeline whose history does not pass through the recorded one", with(func(o *Observation) {
			o.Timeline, o.Slot.Failover, o.Watermark = 3, true, 0
			o.ForkChecked, o.SwitchPoint, o.Delivered = true, 0, 0x6f0
		}), Gap, ReasonTimelineForked, false, false},
		{"synced failover slot, the last event committed at the switch point", with(func(o *Observation) {
			o.Timeline, o.Slot.Failover, o.Watermark = 2, true, 0
			o.ForkChecked, o.SwitchPoint, o.Delivered = true, 0x700, 0x700
		}), Gap, ReasonTimelineForked, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Assess(tt.obs)
			if a.Verdict != tt.verdict || a.Reason != tt.reason || a.RecreateSlot != tt.recreate || a.TimelineMoved != tt.moved {
				t.Fatalf("Assess = %+v, want verdict %s reason %q recreate %t moved %t", a, tt.verdict, tt.reason, tt.recreate, tt.moved)
			}
			if a.Verdict == Gap && a.Detail == "" {
				t.Fatalf("a gap without a detail for people")
			}
			if wantAdvance := tt.reason == ReasonTimelineForked && tt.obs.SwitchPoint != 0; (a.AdvanceTo != 0) != wantAdvance || (wantAdvance && a.AdvanceTo != tt.obs.SwitchPoint) {
				t.Fatalf("AdvanceTo = %s, want the switch point %s only for a fork", a.AdvanceTo, tt.obs.SwitchPoint)
			}
		})
	}
}

func TestKeySlot(t *testing.T) {
	for _, tt := range []struct {
		gen  int
		want string
	}{{0, "pgaudit_cdc"}, {1, "pgaudit_cdc.g1"}, {12, "pgaudit_cdc.g12"}} {
		if got := KeySlot("pgaudit_cdc", tt.gen); got != tt.want {
			t.Errorf("KeySlot(%d) = %q, want %q", tt.gen, got, tt.want)
		}
	}
}
