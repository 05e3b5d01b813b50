//go:build !linux

package replication

import (
	"errors"
	"syscall"
)

// lowWaterMarks is false where Gather has not been measured: it sleeps.
const lowWaterMarks = false

func awaitBytes(syscall.RawConn, int) error {
	return errors.New("not supported on this system")
}
