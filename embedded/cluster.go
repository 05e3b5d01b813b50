package embedded

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries is returned when no PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries not found: install the server package (apt-get install -y postgresql) or set PGAUDIT_TEST_DATABASE_URL")

// Cluster is a PostgreSQL server for tests and the demo:
// either a throwaway cluster started by Run, or the external server named by
// PGAUDIT_TEST_DATABASE_URL.
type Cluster struct {
	mu sync.Mutex // serialises Start, Stop and Restart

	external bool
	adminURL *url.URL // superuser URL of the maintenance database
	port     int

	// Local cluster only.
	binDir  string
	version string // "16.14", from postgres --version
	major   int
	tempDir string
	dataDir string
	logFile string
	asRoot  bool   // run server commands as the postgres OS user
	runuser string // path of runuser when asRoot
	uid     int    // of the postgres OS user, when asRoot
	gid     int

	extra []string // settings overriding the defaults

	watchdog      *exec.Cmd
	watchdogInput io.WriteCloser
}

// External reports whether the cluster is an external server given by
// PGAUDIT_TEST_DATABASE_URL rather than one started by Run.
func (c *Cluster) External() bool { return c.external }

// BinDir returns the directory holding initdb, pg_ctl, postgres and
// pg_recvlogical, or "" for an external server.
func (c *Cluster) BinDir() string { return c.binDir }

// Version returns the server's version ("16.14") and major version (16) as
// reported by postgres --version, or "" and 0 for an external server.
func (c *Cluster) Version() (string, int) { return c.version, c.major }

// Port returns the TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Start starts a stopped local cluster and waits until it accepts
// connections. It fails for an external server.
func (c *Cluster) Start(ctx context.Context) error {
	if c.external {
		return errors.New("embedded: cannot start an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgCtl(ctx, "start", "-l", c.logFile, "-o", c.serverOptions())
}

// Stop stops a local cluster (fast shutdown) and waits until it is down. It
// fails for an external server.
func (c *Cluster) Stop(ctx context.Context) error {
	if c.external {
		return errors.New("embedded: cannot stop an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgCtl(ctx, "stop", "-m", "fast")
}

// Restart restarts a local cluster (pg_ctl restart -m fast) on the same port
// and waits until it accepts connections again. Existing connections are
// closed by the server. It fails for an external server.
func (c *Cluster) Restart(ctx context.Context) error {
	if c.external {
		return errors.New("embedded: cannot restart an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgCtl(ctx, "restart", "-m", "fast", "-l", c.logFile, "-o", c.serverOptions())
}

// NewExternal builds a Cluster for the server named by rawURL.
func NewExternal(rawURL string) (*Cluster, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("PGAUDIT_TEST_DATABASE_URL must be a postgres:// URL of a superuser connection")
	}
	port := 5432
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("PGAUDIT_TEST_DATABASE_URL: bad port %q", p)
		}
	}
	return &Cluster{external: true, adminURL: u, port: port}, nil
}

// StartLocal creates and starts a throwaway cluster.
func StartLocal(ctx context.Context) (*Cluster, error) { return StartLocalWith(ctx) }

// StartLocalWith creates and starts a throwaway cluster with extra server
// settings ("name=value"), which override the defaults — for tests of a
// misconfigured server (wal_level=replica, no free slots).
func StartLocalWith(ctx context.Context, settings ...string) (*Cluster, error) {
	return startLocal(ctx, false, settings)
}

// StartLocalTLS is StartLocalWith for a server that also accepts TLS
// connections, with a self-signed certificate for 127.0.0.1 (see
// TLSRootCert). Plain connections still work.
func StartLocalTLS(ctx context.Context, settings ...string) (*Cluster, error) {
	return startLocal(ctx, true, append([]string{"ssl=on"}, settings...))
}

func startLocal(ctx context.Context, tls bool, settings []string) (_ *Cluster, err error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c, err := newLocal(ctx, binDir, settings)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Shutdown()
		}
	}()
	out, err := c.command(ctx, "initdb", "-D", c.dataDir, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, bytesTail(out, 30))
	}
	if tls {
		if err := c.writeCertificate(); err != nil {
			return nil, err
		}
	}
	if err := c.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// SocketDir is the directory of a local cluster's Unix-domain socket (the
// host of a socket connection).
func (c *Cluster) SocketDir() string { return c.tempDir }

// TLSRootCert is the path of the certificate a StartLocalTLS server
// presents, for sslrootcert (sslmode=verify-full with host 127.0.0.1).
func (c *Cluster) TLSRootCert() string { return filepath.Join(c.tempDir, "root.crt") }

// writeCertificate writes a self-signed certificate for 127.0.0.1 and its
// key into the data directory, where ssl=on looks for them (server.crt,
// server.key: owned by the server's user, the key readable by it alone),
// and a copy of the certificate for clients (TLSRootCert).
func (c *Cluster) writeCertificate() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
		own  bool
	}{
		{filepath.Join(c.dataDir, "server.crt"), certPEM, 0o644, true},
		{filepath.Join(c.dataDir, "server.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600, true},
		{c.TLSRootCert(), certPEM, 0o644, false},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return err
		}
		if c.asRoot && f.own {
			if err := os.Chown(f.path, c.uid, c.gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// newLocal prepares a local cluster of the server in binDir: its directory
// (owned by postgres as root) and the watchdog that removes it. The data
// directory is not created.
func newLocal(ctx context.Context, binDir string, settings []string) (_ *Cluster, err error) {
	c := &Cluster{binDir: binDir, asRoot: os.Geteuid() == 0, extra: settings}
	if c.major, c.version, err = ServerVersion(binDir); err != nil {
		return nil, err
	}

	if c.asRoot {
		if c.runuser, err = exec.LookPath("runuser"); err != nil {
			return nil, fmt.Errorf("running as root needs runuser to run the server as the postgres user: %w", err)
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres OS user: %w", err)
		}
		if c.uid, err = strconv.Atoi(u.Uid); err != nil {
			return nil, fmt.Errorf("postgres user: bad uid %q", u.Uid)
		}
		if c.gid, err = strconv.Atoi(u.Gid); err != nil {
			return nil, fmt.Errorf("postgres user: bad gid %q", u.Gid)
		}
	}

	c.tempDir, err = os.MkdirTemp(tempBase(c.asRoot), "pgaudit-pg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Shutdown()
		}
	}()
	if err := os.Chmod(c.tempDir, 0o700); err != nil {
		return nil, err
	}
	if c.asRoot {
		if err := os.Chown(c.tempDir, c.uid, c.gid); err != nil {
			return nil, err
		}
	}
	c.dataDir = filepath.Join(c.tempDir, "data")
	c.logFile = filepath.Join(c.tempDir, "server.log")

	// From here on, the watchdog removes the cluster if this process dies.
	if err := c.startWatchdog(); err != nil {
		return nil, err
	}

	// As root the server runs as postgres, who must be able to reach the
	// binaries and their libraries (an npm cache under root's home is not).
	if out, err := c.command(ctx, "postgres", "--version").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cannot run %s as the server's OS user: %v: %s (as root, the postgres user needs read and search access to the directory: chmod -R o+rX, or a cache outside /root)",
			filepath.Join(binDir, "postgres"), err, bytesTail(out, 5))
	}
	return c, nil
}

// startOnFreePort starts the server on a free port and sets the admin URL.
func (c *Cluster) startOnFreePort(ctx context.Context) (err error) {
	// The free port may be taken by someone else before the server binds
	// it; retry with a new port in that case.
	for attempt := 0; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return err
		}
		err = c.pgCtl(ctx, "start", "-l", c.logFile, "-o", c.serverOptions())
		if err == nil {
			break
		}
		if attempt >= 2 || !strings.Contains(err.Error(), "could not bind") {
			return err
		}
	}
	c.adminURL = &url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	return nil
}

// serverOptions returns the -o argument of pg_ctl. pg_ctl hands it to a
// shell, so values are quoted.
func (c *Cluster) serverOptions() string {
	settings := []string{
		"wal_level=logical",
		"fsync=off",
		"synchronous_commit=off",
		"full_page_writes=off",
		"max_replication_slots=64",
		"max_wal_senders=64",
		"max_connections=200",
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(c.port),
		"unix_socket_directories=" + c.tempDir,
		"wal_sender_timeout=60s",
		"shared_buffers=128MB",
		"timezone=UTC",
	}
	settings = append(settings, c.extra...)
	var b strings.Builder
	for i, s := range settings {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("-c ")
		b.WriteString(shellQuote(s))
	}
	return b.String()
}

// pgCtl runs pg_ctl with the given action and arguments (plus -D and -w) and
// returns an error including the tail of the server log if it fails.
func (c *Cluster) pgCtl(ctx context.Context, action string, args ...string) error {
	all := append([]string{action, "-D", c.dataDir, "-w", "-t", "120"}, args...)
	out, err := c.command(ctx, "pg_ctl", all...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %v\n%s\n--- last lines of server log %s ---\n%s",
			action, err, strings.TrimSpace(string(out)), c.logFile, c.logTail(30))
	}
	return nil
}

// command returns a command running the server program name from binDir,
// as the postgres OS user when running as root.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	prog := filepath.Join(c.binDir, name)
	var cmd *exec.Cmd
	if c.asRoot {
		cmd = exec.CommandContext(ctx, c.runuser, append([]string{"-u", "postgres", "--", prog}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, prog, args...)
	}
	cmd.Dir = c.tempDir
	return cmd
}

// startWatchdog starts a detached shell that stops the cluster and removes
// its directory if this process exits without telling it "done" (crash,
// signal, test timeout). It holds the read end of a pipe whose write end
// only this process has, so it sees EOF when this process dies.
func (c *Cluster) startWatchdog() error {
	pgCtl := shellQuote(filepath.Join(c.binDir, "pg_ctl"))
	if c.asRoot {
		pgCtl = shellQuote(c.runuser) + " -u postgres -- " + pgCtl
	}
	script := `if read -r line && [ "$line" = done ]; then exit 0; fi
` + pgCtl + ` stop -D ` + shellQuote(c.dataDir) + ` -m immediate -w >/dev/null 2>&1
rm -rf ` + shellQuote(c.tempDir) + "\n"
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = "/"
	// Own process group, so a terminal's SIGINT does not kill it too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start watchdog: %w", err)
	}
	c.watchdog, c.watchdogInput = cmd, in
	return nil
}

// Shutdown stops a local cluster immediately, removes its directory and
// dismisses the watchdog. Errors are reported on stderr.
func (c *Cluster) Shutdown() {
	if c.external {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil {
		if err := c.pgCtl(ctx, "stop", "-m", "immediate"); err != nil {
			fmt.Fprintf(os.Stderr, "embedded: stopping cluster: %v\n", err)
		}
	}
	if c.tempDir != "" {
		if err := os.RemoveAll(c.tempDir); err != nil {
			fmt.Fprintf(os.Stderr, "embedded: removing %s: %v\n", c.tempDir, err)
		}
	}
	if c.watchdog != nil {
		_, _ = io.WriteString(c.watchdogInput, "done\n")
		_ = c.watchdogInput.Close()
		_ = c.watchdog.Wait()
		c.watchdog = nil
	}
}

// logTail returns the last n lines of the server log.
func (c *Cluster) logTail(n int) string {
	data, err := os.ReadFile(c.logFile)
	if err != nil {
		return fmt.Sprintf("(cannot read server log: %v)", err)
	}
	return bytesTail(data, n)
}

// bytesTail returns the last n lines of data.
func bytesTail(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// findBinDir returns the bin directory of the version PGAUDIT_PG_VERSION
// names (see BinDirFor), or, when it is unset, the first directory that
// holds initdb, pg_ctl and postgres, trying pg_config --bindir, the
// directory of initdb on PATH (symlinks resolved) and
// /usr/lib/postgresql/<version>/bin, highest version first.
func findBinDir() (string, error) {
	v, err := RequestedVersion()
	if err != nil {
		return "", err
	}
	if v != 0 {
		return BinDirFor(v)
	}
	var candidates []string
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
	}
	candidates = append(candidates, debianBinDirs("/usr/lib/postgresql")...)
	for _, dir := range candidates {
		if dir != "" && isServerBinDir(dir) {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

// debianBinDirs returns root/<version>/bin for every version directory,
// highest version first.
func debianBinDirs(root string) []string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	type versioned struct {
		dir string
		ver []int
	}
	var vs []versioned
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		var ver []int
		for _, part := range strings.Split(e.Name(), ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				ver = nil
				break
			}
			ver = append(ver, n)
		}
		if ver == nil {
			continue
		}
		vs = append(vs, versioned{filepath.Join(root, e.Name(), "bin"), ver})
	}
	sort.Slice(vs, func(i, j int) bool {
		a, b := vs[i].ver, vs[j].ver
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	dirs := make([]string, len(vs))
	for i, v := range vs {
		dirs[i] = v.dir
	}
	return dirs
}

// isServerBinDir reports whether dir holds executable initdb, pg_ctl and
// postgres programs.
func isServerBinDir(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// tempBase returns the directory in which to create the cluster directory.
// As root, the server runs as postgres, which must be able to reach it; if
// some parent of os.TempDir() is not searchable by others, /tmp is used.
func tempBase(asRoot bool) string {
	base := os.TempDir()
	if !asRoot {
		return base
	}
	for dir := base; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if dir == filepath.Dir(dir) {
			return base
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// AdminURL returns the superuser URL of the maintenance database.
func (c *Cluster) AdminURL() string { return c.adminURL.String() }

// DatabaseURL returns the admin URL with the database replaced by name and
// a non-empty query (so "&replication=database" can be appended).
func (c *Cluster) DatabaseURL(name string) string {
	u := *c.adminURL
	u.Path = "/" + name
	u.RawPath = ""
	if u.RawQuery == "" {
		u.RawQuery = "sslmode=prefer"
	}
	return u.String()
}

// ExternalOverride reports whether PGAUDIT_TEST_DATABASE_URL names a server
// for the tests.
func ExternalOverride() bool { return os.Getenv("PGAUDIT_TEST_DATABASE_URL") != "" }
