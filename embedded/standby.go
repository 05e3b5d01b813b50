package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// StartStandby (for the failover tests and the fault suite; no command
// uses it, so the linker leaves it out of the binary) makes a streaming
// physical standby of the local cluster c,
// without pg_basebackup (the npm packages of the version matrix have none):
// it stops c cleanly, copies its data directory, starts c again, and starts
// the copy, without c's replication slots, on its own port with
// standby.signal and a primary_conninfo
// naming c and a database (dbname=postgres: slot synchronisation, 17+,
// needs one). settings are added to the standby's ("name=value"), e.g.
// primary_slot_name, sync_replication_slots=on, hot_standby_feedback=on.
// The restart of c closes every connection to it. The standby has the same
// system identifier as c, and its own directory and watchdog; Shutdown it
// as any cluster.
func (c *Cluster) StartStandby(ctx context.Context, settings ...string) (_ *Cluster, err error) {
	if c.external {
		return nil, errors.New("embedded: cannot make a standby of an external server")
	}
	s, err := newLocal(ctx, c.binDir, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Shutdown()
		}
	}()

	c.mu.Lock()
	err = c.pgCtl(ctx, "stop", "-m", "fast")
	if err == nil {
		// cp -a keeps the owner (postgres, when running as root).
		var out []byte
		out, err = exec.CommandContext(ctx, "cp", "-a", c.dataDir, s.dataDir).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("copying the data directory: %v: %s", err, out)
		}
		if startErr := c.pgCtl(ctx, "start", "-l", c.logFile, "-o", c.serverOptions()); startErr != nil {
			err = errors.Join(err, startErr)
		}
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}

	// As pg_basebackup does, leave the primary's replication slots behind:
	// a standby has only the slots it makes or synchronises itself.
	slots, err := os.ReadDir(filepath.Join(s.dataDir, "pg_replslot"))
	if err != nil {
		return nil, err
	}
	for _, e := range slots {
		if err := os.RemoveAll(filepath.Join(s.dataDir, "pg_replslot", e.Name())); err != nil {
			return nil, err
		}
	}

	signal := filepath.Join(s.dataDir, "standby.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		return nil, err
	}
	if s.asRoot {
		if err := os.Chown(signal, s.uid, s.gid); err != nil {
			return nil, err
		}
	}
	s.extra = append([]string{
		"primary_conninfo=host=127.0.0.1 port=" + strconv.Itoa(c.port) + " user=postgres dbname=postgres application_name=pgcluster_standby",
	}, settings...)
	if err := s.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Promote promotes a standby (pg_ctl promote) and waits until it accepts
// writes.
func (c *Cluster) Promote(ctx context.Context) error {
	if c.external {
		return errors.New("embedded: cannot promote an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgCtl(ctx, "promote")
}

// StopImmediate stops a local cluster the way a crash would (pg_ctl stop -m
// immediate): no shutdown checkpoint, nothing more sent to standbys.
func (c *Cluster) StopImmediate(ctx context.Context) error {
	if c.external {
		return errors.New("embedded: cannot stop an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgCtl(ctx, "stop", "-m", "immediate")
}

// RestartWith adds settings ("name=value") to those the local cluster c
// starts with, overriding earlier values of the same names (settings given
// at start are command-line options, which ALTER SYSTEM cannot override),
// and restarts it (pg_ctl restart -m fast) on the same port. For a standby
// this changes, e.g., its primary_conninfo.
func (c *Cluster) RestartWith(ctx context.Context, settings ...string) error {
	if c.external {
		return errors.New("embedded: cannot restart an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.extra = append(c.extra, settings...)
	return c.pgCtl(ctx, "restart", "-m", "fast", "-l", c.logFile, "-o", c.serverOptions())
}
