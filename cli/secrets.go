package cli

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// readSecrets takes the database URL and the spine's token from their files
// when named there, and warns, once, of a secret given on the command line,
// where every local user can read it (ps, /proc/PID/cmdline). It never
// prints the secret.
func (o *options) readSecrets(fs *pflag.FlagSet, stderr io.Writer) error {
	for _, s := range []struct {
		flag, fileFlag string
		value          *string
		file           string
	}{
		{"database-url", "database-url-file", &o.databaseURL, o.databaseURLFile},
		{"audit-stream-token", "audit-stream-token-file", &o.token, o.tokenFile},
	} {
		if s.file == "" {
			continue
		}
		if *s.value != "" {
			return usageError("both %s and %s are set: keep one (the file)", o.setting(s.flag), o.setting(s.fileFlag))
		}
		b, err := os.ReadFile(s.file)
		if err != nil {
			return usageError("cannot read %s %q: %v; point it at a readable file holding the value", o.setting(s.fileFlag), s.file, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return usageError("%s %q is empty: write the value into it", o.setting(s.fileFlag), s.file)
		}
		*s.value = v
		// Errors about the value name where it came from.
		if o.fromEnv == nil {
			o.fromEnv = map[string]string{}
		}
		o.fromEnv[s.flag] = o.setting(s.fileFlag) + " " + s.file
	}
	inArgv := func(flag string) bool {
		f := fs.Lookup(flag)
		_, fromEnv := o.fromEnv[flag]
		return f != nil && f.Changed && !fromEnv
	}
	var shown []string
	if inArgv("database-url") && hasPassword(o.databaseURL) {
		shown = append(shown, "the password in --database-url (use PGPASSWORD, a passfile, DATABASE_URL or --database-url-file)")
	}
	if inArgv("audit-stream-token") && o.token != "" {
		shown = append(shown, "--audit-stream-token (use AUDIT_STREAM_TOKEN or --audit-stream-token-file)")
	}
	if len(shown) > 0 {
		fmt.Fprintf(stderr, "warning: every local user can read %s in the process list; pass secrets in the environment or a file\n", strings.Join(shown, " and "))
	}
	return nil
}

// hasPassword reports whether a PostgreSQL connection string carries a
// password: in a URL's user information or query, or as a DSN keyword.
func hasPassword(conn string) bool {
	if strings.HasPrefix(conn, "postgres://") || strings.HasPrefix(conn, "postgresql://") {
		u, err := url.Parse(conn)
		if err != nil {
			return strings.Contains(conn, "@") // unparseable: assume the worst
		}
		if _, set := u.User.Password(); set {
			return true
		}
		return u.Query().Has("password")
	}
	for _, field := range strings.Fields(conn) {
		if k, _, ok := strings.Cut(field, "="); ok && strings.TrimSpace(k) == "password" {
			return true
		}
	}
	return strings.Contains(conn, "password =") || strings.Contains(conn, "password=")
}
