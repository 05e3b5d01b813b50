//go:build linux && !amd64 && !arm64

package rawsock

// sysPwritev2 is unknown here: File makes ordinary writes.
const sysPwritev2 = 0
