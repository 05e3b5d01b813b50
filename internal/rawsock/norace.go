//go:build linux && !race

package rawsock

// raceRead and raceWrite mark raw calls for the race detector (race.go);
// without it they do nothing.
func raceRead(uintptr, []byte)  {}
func raceWrite(uintptr, []byte) {}
