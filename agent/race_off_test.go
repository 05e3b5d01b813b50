//go:build !race

package agent_test

// raceSlowdown scales the harness's timeouts (see race_on_test.go).
const raceSlowdown = 1
