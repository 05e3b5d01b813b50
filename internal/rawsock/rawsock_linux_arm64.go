package rawsock

// sysPwritev2 is pwritev2's number (package syscall does not name it).
const sysPwritev2 = 287
