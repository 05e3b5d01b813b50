package preflight

import (
	"strings"
	"testing"
)

// TestConninfoDBName: doctor reads the database of a standby's
// primary_conninfo as libpq does, in both forms, and is not fooled by
// "dbname=" inside another value.
func TestConninfoDBName(t *testing.T) {
	tests := []struct {
		name, conninfo, want string
		wantErr              bool
	}{
		{"keyword/value", "host=10.0.0.1 port=5432 user=repl dbname=app", "app", false},
		{"spaces around =", "host=10.0.0.1 dbname = app user=repl", "app", false},
		{"tabs and newlines", "host=a\tdbname=\n app", "app", false},
		{"quoted with a space", "host=a dbname='my app'", "my app", false},
		{"quoted with escapes", `dbname='it\'s \\ here'`, `it's \ here`, false},
		{"backslash escape unquoted", `dbname=a\ b`, "a b", false},
		{"the last one wins", "dbname=a host=h dbname=b", "b", false},
		{"no dbname", "host=10.0.0.1 port=5432 user=repl application_name=s1", "", false},
		{"dbname= inside another value", "host=h application_name=dbname=x", "", false},
		{"dbname= inside a quoted value", "host=h options='-c dbname=x'", "", false},
		{"empty quoted dbname", "host=h dbname=''", "", false},
		{"empty string", "", "", false},
		{"dbname at the end, empty", "host=h dbname=", "", false},
		{"passfile and sslrootcert are not read", "host=h sslrootcert=/nonexistent/root.crt passfile=/nonexistent dbname=app", "app", false},
		{"URI with path", "postgresql://repl:secret@10.0.0.1:5432/app?sslmode=require", "app", false},
		{"short URI scheme", "postgres://h/app", "app", false},
		{"URI with dbname parameter", "postgresql://h:5432/?dbname=app&application_name=s1", "app", false},
		{"URI: dbname parameter overrides the path", "postgresql://h/one?dbname=two", "two", false},
		{"URI percent-encoded", "postgresql://%2Fvar%2Frun%2Fpostgresql/my%20app", "my app", false},
		{"URI with several hosts", "postgresql://h1:5432,h2:5433/app?target_session_attrs=read-write", "app", false},
		{"URI IPv6", "postgresql://[::1]:5432/app", "app", false},
		{"URI without database", "postgresql://repl@10.0.0.1:5432", "", false},
		{"URI with an empty path", "postgresql://h/?sslmode=disable", "", false},
		{"URI with @ in the query only", "postgresql://h/app?application_name=a@b", "app", false},
		{"missing =", "host=h dbname", "", true},
		{"unterminated quote", "host=h dbname='app", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := conninfoDBName(tt.conninfo)
			if (err != nil) != tt.wantErr {
				t.Fatalf("conninfoDBName(%q): error %v, want error %v", tt.conninfo, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("conninfoDBName(%q) = %q, want %q", tt.conninfo, got, tt.want)
			}
		})
	}
}

// TestConninfoErrorsHideTheText: a malformed primary_conninfo may hold a
// password; no error names any part of it.
func TestConninfoErrorsHideTheText(t *testing.T) {
	for _, s := range []string{
		"host=h password=s3cr3t tail dbname=d",
		"host=h password='s3cr3t dbname=d",
		"postgresql://u:pw@h/d?s3cr3t",
		"postgresql://u:pw@h/d?dbname=%zzs3cr3t",
		"postgresql://u:pw@h/%zzs3cr3t",
	} {
		_, err := conninfoDBName(s)
		if err == nil {
			t.Fatalf("%q: no error", s)
		}
		for _, secret := range []string{"s3cr3t", "tail", "zz"} {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("%q: the error %q shows part of the string", s, err)
			}
		}
	}
}
