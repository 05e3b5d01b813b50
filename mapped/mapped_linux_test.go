package mapped

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
)

// rssFile is this process's resident pages of mapped files (bytes).
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestReleaseFreesPagesNotBytes: a region at an unaligned offset reads as
// the file; releasing what was read drops it from the process's memory,
// and reading it again still gives the file's bytes.
func TestReleaseFreesPagesNotBytes(t *testing.T) {
	const size = 32 << 20
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i*7 + i>>12)
	}
	f, err := os.CreateTemp(t.TempDir(), "region")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append([]byte("head"), want...)); err != nil {
		t.Fatal(err)
	}
	r, err := Map(f, 4, size)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := rssFile(t)
	if !bytes.Equal(r.Bytes(), want) {
		t.Fatal("the region does not read as the file")
	}
	touched := rssFile(t)
	if touched-before < size*3/4 {
		t.Fatalf("reading %d bytes mapped %d bytes: the test measures nothing", size, touched-before)
	}
	for i := 0; i < size; i += 1 << 20 {
		r.Release(r.Bytes()[i : i+1<<20])
	}
	if after := rssFile(t); after-before > size/8 {
		t.Fatalf("after releasing every byte %d of %d mapped bytes stay", after-before, size)
	}
	if !bytes.Equal(r.Bytes(), want) {
		t.Fatal("released bytes read back differently")
	}
	r.Release(want[:4096]) // not a view into the region: nothing happens
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if r.Bytes() != nil {
		t.Fatal("a closed region still has bytes")
	}
}
