package preflight

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestErrFix: a privilege is named only when PostgreSQL refused for lack of
// one (SQLSTATE 42501).
func TestErrFix(t *testing.T) {
	const grant = "GRANT pg_read_all_settings TO r"
	denied := fmt.Errorf("reading: %w", &pgconn.PgError{Code: "42501", Message: "permission denied"})
	if got := errFix(denied, grant); got != grant {
		t.Errorf("42501: got %q, want the grant", got)
	}
	for _, err := range []error{
		&pgconn.PgError{Code: "42P01", Message: "relation does not exist"},
		&pgconn.PgError{Code: "25006", Message: "cannot execute CREATE TABLE in a read-only transaction"},
		errors.New("dial tcp: connection refused"),
	} {
		if got := errFix(err, grant); strings.Contains(got, "GRANT") || strings.Contains(strings.ToLower(got), "privilege") {
			t.Errorf("%v: fix %q mentions privileges", err, got)
		}
	}
}

// TestSplitSlotList: synchronized_standby_slots is read as PostgreSQL
// reads it.
func TestSplitSlotList(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"standby1":              "standby1",
		" standby1 , Standby2 ": "standby1|standby2",
		`"Mixed",b`:             "Mixed|b",
		`"a""b" , c`:            `a"b|c`,
		"a,,b":                  "a|b",
	} {
		if got := strings.Join(splitSlotList(in), "|"); got != want {
			t.Errorf("splitSlotList(%q) = %q, want %q", in, got, want)
		}
	}
}
