package cli

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
)

// unreachableDSN parses but has nothing listening: a command that gets past
// validation fails connecting, with exit 1.
const unreachableDSN = "postgres://auditor@127.0.0.1:1/app?connect_timeout=2"

// cleanEnv empties every environment fall-back, so that the machine's
// environment does not leak into a test (empty values are ignored).
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, f := range append(envFallbacks[:len(envFallbacks):len(envFallbacks)], natsEnv...) {
		t.Setenv(f.env, "")
	}
}

// runFor runs the CLI in-process until it returns or ctx ends.
func runFor(ctx context.Context, args ...string) (string, error) {
	var out, errOut syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(ctx)
	return errOut.String(), err
}

// TestRejectedValuesExitTwo: every value the CLI used to accept silently, or
// refused with exit 1, is a usage error (exit 2) whose message says what is
// allowed. Flags and environment fall-backs are checked alike, before any
// connection is tried.
func TestRejectedValuesExitTwo(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
		not  string // must not appear (a password)
	}{
		{"unparseable URL", nil, []string{"list", "--database-url", "postgres://%zz"},
			[]string{"--database-url cannot be parsed", "invalid percent-encoded token", "postgres://user:password@host:5432/db"}, ""},
		{"two destinations", map[string]string{"PGAUDIT_NATS_URL": "nats://127.0.0.1:4222"}, []string{"list", "--audit-stream-url", "http://spine:8093"},
			[]string{"both --audit-stream-url and PGAUDIT_NATS_URL are set", "pgaudit-cdc relay"}, ""},
		{"NATS credentials in the URL", nil, []string{"list", "--nats-url", "nats://app:hunter2@127.0.0.1:4222"},
			[]string{"--nats-url holds credentials", "--nats-creds-file"}, "hunter2"},
		{"NATS URL of another scheme", nil, []string{"list", "--nats-url", "http://127.0.0.1:4222"},
			[]string{"invalid NATS server URL in --nats-url", "nats://host:4222"}, ""},
		{"unparseable URL from DATABASE_URL", map[string]string{"DATABASE_URL": "postgres://%zz"}, []string{"list"},
			[]string{"DATABASE_URL cannot be parsed"}, ""},
		{"the password is not repeated", map[string]string{"DATABASE_URL": "postgres://u:s3cr%zzt@h/db"}, []string{"status"},
			[]string{"DATABASE_URL cannot be parsed", "percent-encoding"}, "s3cr"},
		{"bad key=value string", nil, []string{"list", "--database-url", "host=db port=abc"},
			[]string{"cannot be parsed (invalid port)"}, ""},
		{"missing CA file", nil, []string{"list", "--database-url", "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"},
			[]string{"unable to read CA file"}, ""},

		{"dedup window 0", nil, []string{"list", "--dedup-window", "0"}, []string{"--dedup-window 0", "between 1 and 100000"}, ""},
		{"dedup window negative", nil, []string{"list", "--dedup-window", "-1"}, []string{"between 1 and 100000"}, ""},
		{"dedup window too large", nil, []string{"list", "--dedup-window", "100001"}, []string{"between 1 and 100000"}, ""},
		{"dedup window from the environment", map[string]string{"PGAUDIT_DEDUP_WINDOW": "0"}, []string{"list"},
			[]string{"PGAUDIT_DEDUP_WINDOW 0", "between 1 and 100000"}, ""},
		{"dedup window not a number", map[string]string{"PGAUDIT_DEDUP_WINDOW": "lots"}, []string{"list"},
			[]string{"invalid PGAUDIT_DEDUP_WINDOW"}, ""},

		{"spine timeout 0", nil, []string{"list", "--spine-timeout", "0"}, []string{"--spine-timeout 0s", "positive duration"}, ""},
		{"spine timeout negative", nil, []string{"list", "--spine-timeout", "-5s"}, []string{"positive duration"}, ""},
		{"spine timeout from the environment", map[string]string{"AUDIT_STREAM_TIMEOUT": "0s"}, []string{"list"},
			[]string{"AUDIT_STREAM_TIMEOUT 0s", "positive duration"}, ""},

		{"publication with a semicolon", nil, []string{"list", "--publication", "Bad;Pub"},
			[]string{`invalid publication name "Bad;Pub"`, "lower-case letters, digits, _ and $, starting with a letter or _"}, ""},
		{"publication in upper case", nil, []string{"list", "--publication", "Audit"}, []string{"invalid publication name"}, ""},
		{"publication starting with a digit", nil, []string{"list", "--publication", "1audit"}, []string{"invalid publication name"}, ""},
		{"publication with a dash", nil, []string{"list", "--publication", "pg-audit"}, []string{"invalid publication name"}, ""},
		{"publication too long", nil, []string{"list", "--publication", strings.Repeat("p", 64)}, []string{"1 to 63 characters"}, ""},
		{"publication empty", nil, []string{"list", "--publication", ""}, []string{"invalid publication name"}, ""},
		{"publication from the environment", map[string]string{"PGAUDIT_PUBLICATION": "Bad;Pub"}, []string{"list"},
			[]string{"(PGAUDIT_PUBLICATION)"}, ""},
		{"slot from the environment", map[string]string{"PGAUDIT_SLOT": "Bad Slot"}, []string{"list"}, []string{"invalid slot name"}, ""},
		{"log level from the environment", map[string]string{"LOG_LEVEL": "loud"}, []string{"list"}, []string{"use debug, info, warn or error"}, ""},
		{"log format", nil, []string{"list", "--log-format", "xml"}, []string{"use text, json or auto"}, ""},

		{"status interval 0", nil, []string{"run", "--status-interval", "0"}, []string{"--status-interval 0s", "positive duration"}, ""},
		{"status interval negative", nil, []string{"run", "--status-interval", "-1s"}, []string{"positive duration"}, ""},
		{"shutdown grace negative", nil, []string{"run", "--shutdown-grace", "-1s"}, []string{"--shutdown-grace -1s", "0 (stop at once"}, ""},
		{"gap hold negative", nil, []string{"run", "--gap-hold", "-1s"}, []string{"--gap-hold -1s", "0 (exit at once", "positive duration"}, ""},
		{"spill directory that cannot be made", nil, []string{"run", "--unsigned", "--spill-dir", "/dev/null/spill"},
			[]string{"the spill directory /dev/null/spill cannot be created", "set --spill-dir to a writable directory"}, ""},
		{"spill directory from the environment", map[string]string{"PGAUDIT_SPILL_DIR": "/dev/null/x"}, []string{"run", "--unsigned"},
			[]string{"the spill directory /dev/null/x"}, ""},
		{"spill memory not a size", nil, []string{"run", "--spill-memory", "lots"}, []string{`"lots" is not a size`, "64MiB"}, ""},
		{"spill cap from the environment", map[string]string{"PGAUDIT_SPILL_MAX_BYTES": "1.5GiB"}, []string{"run"},
			[]string{"PGAUDIT_SPILL_MAX_BYTES", "is not a size"}, ""},

		{"chunk size 0", nil, []string{"backfill", "t", "--chunk-size", "0"}, []string{"--chunk-size 0", "1 to 1000000 rows"}, ""},
		{"chunk size negative", nil, []string{"backfill", "t", "--chunk-size", "-5"}, []string{"1 to 1000000 rows"}, ""},
		{"chunk size too large", nil, []string{"backfill", "t", "--chunk-size", "1000001"}, []string{"1 to 1000000 rows"}, ""},

		{"watch without --kind", nil, []string{"watch", "t", "--source", "s"}, []string{`required flag(s) "kind" not set`, "pgaudit-cdc watch --help"}, ""},
		{"watch without --source", nil, []string{"watch", "t", "--kind", "other"}, []string{`"source" not set`}, ""},
		{"watch of pgaudit-cdc's registry", nil, []string{"watch", "pgaudit_cdc.watches", "--kind", "other", "--source", "s"},
			[]string{"pgaudit-cdc's own tables cannot be watched: pgaudit_cdc.watches is in schema pgaudit_cdc", "self-audit events"}, ""},
		{"watch of a pgaudit-cdc table, any case", nil, []string{"watch", `PGAUDIT_CDC."backfills"`, "--kind", "other", "--source", "s"},
			[]string{"own tables cannot be watched: pgaudit_cdc.backfills"}, ""},
		{"watch of pgaudit-cdc's schema", nil, []string{"watch", "--schema", "pgaudit_cdc", "--kind", "other", "--source", "s"},
			[]string{"own tables cannot be watched: schema pgaudit_cdc holds them"}, ""},
		{"--columns with --exclude-columns", nil, []string{"watch", "t", "--kind", "other", "--source", "s", "--columns", "a", "--exclude-columns", "b"},
			[]string{"not both"}, ""},
		{"--on-columns with --columns", nil, []string{"watch", "t", "--kind", "other", "--source", "s", "--columns", "a", "--on-columns", "a"},
			[]string{"use one or the other"}, ""},

		{"unknown command", nil, []string{"bogus"}, []string{`unknown command "bogus" for "pgaudit-cdc"`}, ""},
		{"misspelt command", nil, []string{"lsit"}, []string{`unknown command "lsit" for "pgaudit-cdc" (did you mean "list"?)`}, ""},
		{"unknown dead-letters command", nil, []string{"dead-letters", "bogus"}, []string{`unknown command "bogus" for "pgaudit-cdc dead-letters"`}, ""},
		{"missing argument", nil, []string{"unwatch"}, []string{"accepts 1 arg(s), received 0"}, ""},
		{"extra argument", nil, []string{"list", "extra"}, []string{`unknown command "extra"`}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("DATABASE_URL", unreachableDSN)
			start := time.Now()
			_, _, err := run(t, tt.env, tt.args...)
			if got := exitCode(err); got != 2 {
				t.Fatalf("pgaudit-cdc %s: got exit %d (%v), want 2", strings.Join(tt.args, " "), got, err)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("error %q contains %q", err, tt.not)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %s: validation must not wait for the database", d)
			}
		})
	}
}

// TestEveryCommandRefusesAnUnparseableURL: the check runs before every
// command that reads the configuration, not only those that connect first.
func TestEveryCommandRefusesAnUnparseableURL(t *testing.T) {
	for _, args := range [][]string{
		{"watch", "t", "--kind", "other", "--source", "s"},
		{"watch", "--schema", "billing", "--kind", "other", "--source", "s"},
		{"unwatch", "t"},
		{"list"},
		{"run"},
		{"status"},
		{"doctor"},
		{"backfill", "t"},
		{"dead-letters", "list"},
		{"dead-letters", "retry", "--all"},
		{"dead-letters", "discard", "--all"},
		{"setup", "--print-sql"},
		{"demo"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cleanEnv(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := runFor(ctx, append(args, "--database-url", "postgres://%zz")...)
			if exitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), "--database-url cannot be parsed") {
				t.Fatalf("got exit %d (%v), want 2 saying --database-url cannot be parsed", exitCode(err), err)
			}
		})
	}
}

// TestRunWithUnparseableURLExitsAtOnce: run used to retry such a URL forever.
func TestRunWithUnparseableURLExitsAtOnce(t *testing.T) {
	for name, setup := range map[string]func(t *testing.T) []string{
		"flag":        func(*testing.T) []string { return []string{"run", "--database-url", "postgres://%zz"} },
		"environment": func(t *testing.T) []string { t.Setenv("DATABASE_URL", "postgres://%zz"); return []string{"run"} },
	} {
		t.Run(name, func(t *testing.T) {
			cleanEnv(t)
			args := setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err := runFor(ctx, args...)
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("run took %s to give up", d)
			}
			if exitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), "cannot be parsed") {
				t.Fatalf("got exit %d (%v), want 2", exitCode(err), err)
			}
		})
	}
}

// TestAcceptedBoundaryValues: the edges of each range pass validation; the
// command then fails connecting (exit 1), not with a usage error.
func TestAcceptedBoundaryValues(t *testing.T) {
	for _, args := range [][]string{
		{"list", "--dedup-window", "1"},
		{"list", "--dedup-window", "100000"},
		{"list", "--spine-timeout", "1ms"},
		{"list", "--publication", "_pg$audit_2"},
		{"list", "--publication", strings.Repeat("p", 63)},
		{"list", "--database-url", "host=127.0.0.1 port=1 user=auditor dbname=app connect_timeout=2"},
		{"backfill", "t", "--chunk-size", "1"},
		{"backfill", "t", "--chunk-size", "1000000"},
		{"watch", `"pgaudit_cdc "."watches"`, "--kind", "other", "--source", "s"}, // another schema
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("DATABASE_URL", unreachableDSN)
			_, _, err := run(t, nil, args...)
			if exitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), "connecting to the database") {
				t.Fatalf("got exit %d (%v), want 1 from connecting", exitCode(err), err)
			}
		})
	}
	t.Run("run --shutdown-grace 0 --status-interval 1ms --gap-hold 0", func(t *testing.T) {
		cleanEnv(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		// Nothing to connect to: the agent retries until ctx ends, then
		// stops cleanly.
		if _, err := runFor(ctx, "run", "--database-url", unreachableDSN, "--shutdown-grace", "0", "--status-interval", "1ms", "--gap-hold", "0", "--unsigned"); err != nil {
			t.Fatalf("got %v, want a clean stop", err)
		}
	})
}

// TestCommandsWithoutConfiguration: version, help and a bare group run
// whatever the environment holds.
func TestCommandsWithoutConfiguration(t *testing.T) {
	cleanEnv(t)
	t.Setenv("PGAUDIT_DEDUP_WINDOW", "0")
	t.Setenv("DATABASE_URL", "postgres://%zz")
	for _, args := range [][]string{{"version"}, {}, {"dead-letters"}, {"help", "watch"}, {"watch", "--help"}} {
		out, _, err := run(t, nil, args...)
		if err != nil || out == "" {
			t.Errorf("pgaudit-cdc %s: got %v and %q, want output and exit 0", strings.Join(args, " "), err, out)
		}
	}
}

// TestServerRefusalsExitTwo: a --where PostgreSQL refuses and a missing
// privilege are the user's to fix (exit 2), with the server's message.
func TestServerRefusalsExitTwo(t *testing.T) {
	cleanEnv(t)
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn}
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, status text)`)
	for _, tt := range []struct {
		name, where string
		want        []string
	}{
		{"syntax error", "status <>", []string{"syntax error", "42601"}},
		{"unknown column", "nope = 1", []string{`column "nope" does not exist`, "42703"}},
		{"not a boolean", "id + 1", []string{"42804"}},
		{"bad literal", "id > 'abc'", []string{"invalid input syntax for type integer", "22P02"}},
		{"unknown function", "no_such_fn(id)", []string{"42883"}},
		{"mutable function", "random() > 0.5", []string{"invalid publication WHERE expression", "0A000"}},
		{"subquery", "id IN (SELECT 1)", []string{"0A000"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, env, "watch", "t", "--kind", "other", "--source", "s", "--where", tt.where)
			if exitCode(err) != 2 {
				t.Fatalf("got exit %d (%v), want 2", exitCode(err), err)
			}
			for _, want := range append(tt.want, "PostgreSQL refused --where", "fix the expression") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
	if got := mustRun(t, env, "watch", "t", "--kind", "other", "--source", "s", "--where", "status <> 'draft'"); got != "public.t\n" {
		t.Fatalf("watch with a good --where printed %q", got)
	}

	t.Run("missing privilege", func(t *testing.T) {
		u, _ := url.Parse(dsn)
		db := strings.TrimPrefix(u.Path, "/")
		role := "nopriv_" + db[len(db)-6:]
		exec(t, dsn, fmt.Sprintf(`CREATE ROLE %s LOGIN`, role))
		t.Cleanup(func() { exec(t, pgtest.AdminDSN(t), fmt.Sprintf(`DROP OWNED BY %s CASCADE; DROP ROLE %s`, role, role)) })
		u.User = url.User(role)
		_, _, err := run(t, map[string]string{"DATABASE_URL": u.String()}, "unwatch", "t")
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("got exit %d (%v), want 2 with permission denied", exitCode(err), err)
		}
	})
}

// TestSigningKeyErrorsExitTwo: a missing, unreadable or malformed key file,
// or no choice at all, stops run before anything is sent: exit 2, one
// sentence naming the fix, and never the key file's bytes.
func TestSigningKeyErrorsExitTwo(t *testing.T) {
	dir := t.TempDir()
	secret := "c2VjcmV0LWtleS1ieXRlcy1kby1ub3QtcHJpbnQ="
	malformed := filepath.Join(dir, "malformed.pem")
	if err := os.WriteFile(malformed, []byte("-----BEGIN PRIVATE KEY-----\n"+secret+"\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "unreadable.pem")
	if err := os.WriteFile(unreadable, []byte(secret), 0o000); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "raw.key")
	if err := os.WriteFile(notPEM, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no key and no choice", nil, "choose --unsigned"},
		{"missing file", []string{"--signing-key-file", filepath.Join(dir, "absent.pem")}, "pgaudit-cdc keygen --out"},
		{"malformed PEM", []string{"--signing-key-file", malformed}, "not a valid PKCS #8 key"},
		{"not PEM", []string{"--signing-key-file", notPEM}, "not a PEM"},
		{"key and unsigned", []string{"--signing-key-file", malformed, "--unsigned"}, "not both"},
	}
	if os.Geteuid() != 0 { // root reads any file
		tests = append(tests, struct {
			name string
			args []string
			want string
		}{"unreadable", []string{"--signing-key-file", unreadable}, "make it readable"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			_, errOut, err := run(t, nil, append([]string{"run", "--database-url", unreachableDSN}, tt.args...)...)
			if exitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Fatalf("got exit %d (%v), want 2 saying %q", exitCode(err), err, tt.want)
			}
			if strings.Contains(fmt.Sprint(err)+errOut, secret) {
				t.Fatalf("the key file's bytes were printed: %v %s", err, errOut)
			}
		})
	}
}
