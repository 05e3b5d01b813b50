//go:build !linux

package replication

import (
	"errors"
	"net"
	"syscall"
)

// lowWaterMarks is false where Gather and rawRead have not been measured:
// Gather sleeps, and reads go through net.Conn.
const lowWaterMarks = false

func awaitBytes(syscall.RawConn, int) error {
	return errors.New("not supported on this system")
}

func rawRead(net.Conn, syscall.RawConn, []byte) (int, error) {
	return 0, errors.New("not supported on this system")
}
