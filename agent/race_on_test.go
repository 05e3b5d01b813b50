//go:build race

package agent_test

// raceSlowdown scales the harness's timeouts: under the race detector the
// in-process spine double parses and hashes a 40 MB event about ten times
// slower than a real spine would.
const raceSlowdown = 10
