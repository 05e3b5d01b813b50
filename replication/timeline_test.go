package replication

import (
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

func TestParseTimelineHistory(t *testing.T) {
	lsn := func(s string) pgoutput.LSN {
		l, err := pgoutput.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, tc := range []struct {
		name    string
		content string
		want    []TimelineSwitch
		wantErr bool
	}{
		{name: "one promotion", content: "1\t0/3000158\tno recovery target specified\n",
			want: []TimelineSwitch{{1, lsn("0/3000158")}}},
		{name: "two promotions, comments and blank lines",
			content: "# history\n1\t0/3000158\tno recovery target specified\n\n2\t1/A0\tbefore 2026-11-28 12:00:00+00\n",
			want:    []TimelineSwitch{{1, lsn("0/3000158")}, {2, lsn("1/A0")}}},
		{name: "empty", content: "", want: nil},
		{name: "no switch point", content: "1\n", wantErr: true},
		{name: "bad timeline", content: "x\t0/1\treason\n", wantErr: true},
		{name: "zero timeline", content: "0\t0/1\treason\n", wantErr: true},
		{name: "bad lsn", content: "1\tnot-an-lsn\treason\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTimelineHistory([]byte(tc.content))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	h := []TimelineSwitch{{1, lsn("0/3000158")}, {2, lsn("1/A0")}}
	if at, ok := SwitchPointOf(h, 2); !ok || at != lsn("1/A0") {
		t.Fatalf("SwitchPointOf(2) = %s, %v", at, ok)
	}
	if _, ok := SwitchPointOf(h, 3); ok {
		t.Fatal("SwitchPointOf(3) found a switch point for a timeline not in the history")
	}
}
