package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/testkey"
)

// agentProcess is the built pgaudit-cdc binary running `run` with its
// stdout sink sent to /dev/null: the agent as users run it, whole process.
type agentProcess struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan error
}

// startAgentProcess starts bin run on slot and publication of the database
// at url, reporting its confirmed position every status. A build that
// signs its trail signs it with a throwaway key (one per binary directory,
// so that a slot's trail keeps its key across a scenario's restarts); an
// older one, from before the signed trail, runs as it did.
func startAgentProcess(ctx context.Context, bin, url, slot, pub string, status time.Duration, extra ...string) (*agentProcess, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	args := []string{"run", "--database-url", url, "--slot", slot, "--publication", pub,
		"--status-interval", status.String(), "--log-format", "text", "--log-level", "warn"}
	signs, err := signsTrail(ctx, bin)
	if err != nil {
		return nil, err
	}
	if signs {
		keyFile := filepath.Join(filepath.Dir(bin), "signing-key.pem")
		if _, err := os.Stat(keyFile); err != nil {
			if keyFile, err = testkey.Write(filepath.Dir(bin)); err != nil {
				return nil, err
			}
		}
		args = append(args, "--signing-key-file", keyFile)
	}
	p := &agentProcess{exited: make(chan error, 1)}
	p.cmd = exec.CommandContext(ctx, bin, append(args, extra...)...)
	p.cmd.Stdout, p.cmd.Stderr, p.cmd.Env = devnull, &p.stderr, agentEnv()
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.exited <- p.cmd.Wait() }()
	return p, nil
}

// pid is the agent's process id.
func (p *agentProcess) pid() int { return p.cmd.Process.Pid }

// alive fails once the process exited.
func (p *agentProcess) alive() error {
	select {
	case err := <-p.exited:
		p.exited <- err
		return fmt.Errorf("the agent exited: %v: %s", err, p.stderr.String())
	default:
		return nil
	}
}

// stop sends SIGTERM and waits, killing it after 30 s.
func (p *agentProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		p.exited <- <-p.exited
	}
}

// agentBinary returns e.opts.AgentBin, or builds the agent into a temporary
// directory that cleanup removes.
func (e *env) agentBinary(ctx context.Context) (bin string, cleanup func(), err error) {
	if e.opts.AgentBin != "" {
		return e.opts.AgentBin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "pgaudit-bench-bin-")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "pgaudit-cdc")
	e.logf("building the agent binary")
	if err := e.buildAgent(ctx, bin); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// child is a helper process the harness runs beside the agent
// (pg_recvlogical): whether it still runs, and its end.
type child struct {
	name   string
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan error
}

// startChild starts cmd, keeping its standard error for the failure
// message.
func startChild(name string, cmd *exec.Cmd) (*child, error) {
	c := &child{name: name, cmd: cmd, exited: make(chan error, 1)}
	cmd.Stderr = &c.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { c.exited <- cmd.Wait() }()
	return c, nil
}

// alive fails once the process exited.
func (c *child) alive() error {
	select {
	case err := <-c.exited:
		c.exited <- err
		return fmt.Errorf("%s exited: %v: %s", c.name, err, c.stderr.String())
	default:
		return nil
	}
}

// stop sends sig and waits, killing the process after 30 s.
func (c *child) stop(sig os.Signal) {
	_ = c.cmd.Process.Signal(sig)
	select {
	case err := <-c.exited:
		c.exited <- err
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		c.exited <- <-c.exited
	}
}

// agentEnv is the bench's environment without what could point an agent
// elsewhere.
func agentEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AUDIT_STREAM_") && !strings.HasPrefix(kv, "PGAUDIT_") &&
			!strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "METRICS_ADDR=") {
			env = append(env, kv)
		}
	}
	return env
}

// signing remembers signsTrail's answer per binary.
var signing sync.Map

// signsTrail reports whether bin knows --signing-key-file (builds from
// before the signed trail do not). It asks once per binary: the set-up
// asks first (watchWith), so that no timed run starts an extra process.
func signsTrail(ctx context.Context, bin string) (bool, error) {
	if v, ok := signing.Load(bin); ok {
		return v.(bool), nil
	}
	out, err := exec.CommandContext(ctx, bin, "run", "--help").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%s run --help: %w: %s", bin, err, out)
	}
	signs := bytes.Contains(out, []byte("--signing-key-file"))
	signing.Store(bin, signs)
	return signs, nil
}

// watchWith registers table under pub and slot with bin's own watch
// command (another build: its own migrations).
func watchWith(ctx context.Context, bin, url, pub, slot, table string) error {
	if _, err := signsTrail(ctx, bin); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "watch", table, "--kind", benchKind, "--source", benchSource,
		"--database-url", url, "--slot", slot, "--publication", pub)
	cmd.Env = agentEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s watch %s: %w: %s", bin, table, err, out)
	}
	return nil
}
