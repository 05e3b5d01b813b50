//go:build !linux

package publish

import "syscall"

// limitUnsent does nothing where TCP_NOTSENT_LOWAT has not been tried: a
// request's progress is then seen as the kernel takes it (see the Linux
// version).
func limitUnsent(_, _ string, _ syscall.RawConn) error { return nil }
