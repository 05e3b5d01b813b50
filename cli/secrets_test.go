package cli

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
)

// TestSecretsInArgvWarn: a password in --database-url or a token in
// --audit-stream-token works but is warned of, once, without being
// printed; the environment and the *-file flags take them silently.
func TestSecretsInArgvWarn(t *testing.T) {
	dsn := pgtest.DSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "SECRETPW") // trust auth: ignored
	withPassword := u.String()
	env := map[string]string{"DATABASE_URL": "", "AUDIT_STREAM_URL": "", "AUDIT_STREAM_TOKEN": ""}
	const warning = "every local user can read"

	out, errOut, err := run(t, env, "list", "--database-url", withPassword, "--audit-stream-token", "SECRETTOK")
	if err != nil {
		t.Fatalf("list with secrets in argv: %v\n%s", err, errOut)
	}
	if strings.Count(errOut, warning) != 1 || !strings.Contains(errOut, "--database-url") || !strings.Contains(errOut, "--audit-stream-token") ||
		!strings.Contains(errOut, "PGPASSWORD") || !strings.Contains(errOut, "--audit-stream-token-file") {
		t.Errorf("want one warning naming both flags and the fixes, got:\n%s", errOut)
	}
	if strings.Contains(out+errOut, "SECRETPW") || strings.Contains(out+errOut, "SECRETTOK") {
		t.Errorf("a secret was printed:\n%s\n%s", out, errOut)
	}

	dir := t.TempDir()
	urlFile, tokenFile := filepath.Join(dir, "url"), filepath.Join(dir, "token")
	if err := os.WriteFile(urlFile, []byte(withPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("SECRETTOK\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"environment": {"list"},
		"files":       {"list", "--database-url-file", urlFile, "--audit-stream-token-file", tokenFile},
	} {
		e := map[string]string{"DATABASE_URL": "", "AUDIT_STREAM_URL": "", "AUDIT_STREAM_TOKEN": ""}
		if name == "environment" {
			e["DATABASE_URL"], e["AUDIT_STREAM_TOKEN"] = withPassword, "SECRETTOK"
		}
		if _, errOut, err := run(t, e, args...); err != nil || strings.Contains(errOut, warning) {
			t.Errorf("%s: err %v, stderr:\n%s", name, err, errOut)
		}
	}

	badFile := filepath.Join(dir, "bad")
	if err := os.WriteFile(badFile, []byte("postgres://%zz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, map[string]string{"DATABASE_URL": ""}, "list", "--database-url-file", badFile); exitCode(err) != 2 ||
		!strings.Contains(err.Error(), "--database-url-file "+badFile) {
		t.Errorf("an unparseable URL in the file: %v, want exit 2 naming the file", err)
	}
	for name, args := range map[string][]string{
		"both":       {"list", "--database-url", dsn, "--database-url-file", urlFile},
		"unreadable": {"list", "--audit-stream-token-file", filepath.Join(dir, "missing")},
	} {
		_, _, err := run(t, map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_TOKEN": ""}, args...)
		if code := exitCode(err); code != 2 || !strings.Contains(err.Error(), "-file") {
			t.Errorf("%s: exit %d (%v), want 2 naming the file flag", name, code, err)
		}
	}
}

func TestHasPassword(t *testing.T) {
	for conn, want := range map[string]bool{
		"postgres://u:pw@db/app":                 true,
		"postgres://u@db/app":                    false,
		"postgresql://u@db/app?password=pw":      true,
		"postgres://db/app?sslmode=verify-full":  false,
		"host=db user=u password=pw dbname=app":  true,
		"host=db user=u dbname=app":              false,
		"host=db user=u password = pw dbname=ap": true,
	} {
		if got := hasPassword(conn); got != want {
			t.Errorf("hasPassword(%q) = %t, want %t", conn, got, want)
		}
	}
}
