// Package faults holds the fault-injection suite; it has tests only. The
// tests run the agent binary against a throwaway PostgreSQL and the spine
// double (internal/spinetest), inject faults, and check that in the end the
// spine holds, for the changes delivered, exactly one event per committed change, in commit order, with
// a valid chain:
//
//   - TestKillNineCycles: the agent is killed with SIGKILL at random moments
//     while a workload runs, and restarted, cycle after cycle; its variants
//     with transactions streamed while in progress (Streamed) and with
//     17 MiB rows set aside in the spill directory as they arrive
//     (HugeRows);
//   - TestSpineFaultsAndPostgresRestart: the spine double fails in the ways
//     the contract allows (500 and 503 answers, a connection dropped before
//     or after the append, stalls) and PostgreSQL restarts under the agent;
//   - TestStandbyTakesOver: a second agent waits as a hot standby and takes
//     the slot over when the first is killed;
//   - TestDeadLetterRoundTrip: the spine refuses a kind: the events are kept
//     as dead letters, the stream moves on, and retried dead letters land;
//   - TestIdleSlotDoesNotPinWAL: a busy unwatched table and an idle watched
//     one do not make the slot retain WAL.
//
// `make test` runs a reduced form; `make test-faults` the full one, sized by
// PGAUDIT_FAULT_CYCLES and PGAUDIT_FAULT_ROWS.
package faults
