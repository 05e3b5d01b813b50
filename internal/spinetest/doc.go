// Package spinetest is an in-process test double of the audit-stream spine,
// the hash-chained event log pgaudit-cdc posts its events to (the contract is
// shared/audit-stream-contract.md). It serves the contract's HTTP endpoints
// with the spine's validation, status codes and FastAPI-shaped error bodies,
// computes the hash chain byte for byte like the real service (Canonical,
// Hash), and injects faults into POST /events (FailNext, SetRandomFaults,
// SetStall, SetStallBytes, SetRedirect) and into the read-back GET /events
// (FailNextRead), or takes the whole spine away (SetDown), so that
// integration tests and benchmarks can exercise a producer's retry and
// ambiguity handling. Some faults are answers the spine itself never gives
// but a proxy in its place does (a 201 with an HTML page, 401, 403, 404, 405,
// a redirect), so that a producer can be checked not to take them for the
// spine's verdict on its event.
//
// Typical use:
//
//	spine := spinetest.Start(t)               // httptest server on 127.0.0.1
//	spine.FailNext(1, spinetest.FaultDropAfter)
//	runAgainst(spine.URL())
//	if ok, at, why := spine.Verify(); !ok { t.Fatalf("chain broken at %d: %s", at, why) }
//	events := spine.Events()
//
// # Fidelity
//
// What the double reproduces from the spine (v0.1, FastAPI + pydantic v2 on
// CPython), beyond the contract's text:
//   - POST /events: an empty body is 422 "missing" (loc ["body"]); a
//     Content-Type other than none, application/json or application/*+json
//     is 422 (FastAPI then hands the raw bytes to the model); invalid JSON
//     and trailing data are 422 "json_invalid"; a body that is not valid
//     UTF-8, or that holds an integer literal of more than 4300 digits
//     (CPython's int_max_str_digits), is 400 "There was an error parsing the
//     body"; all field errors are reported together, extra fields last, in
//     input order, with pydantic's type, msg, input and ctx.
//   - Timestamps: the spine's field is taken to be a pydantic datetime (the
//     contract does not say; the grammar and the results below were checked
//     against pydantic 2.13), so a given timestamp is parsed and stored (and
//     hashed) as Python's isoformat():
//     "2026-11-22T10:00:00Z" is stored as "2026-11-22T10:00:00+00:00",
//     fractions are kept to the microsecond (truncated) and only when not
//     zero, a naive or date-only value stays naive. A string already in
//     isoformat with an offset is stored as given. This is the one place
//     where the double knowingly departs from "store as given": see
//     normalizeTimestamp for the accepted grammar. An absent or null
//     timestamp is stamped with the current UTC time, seconds precision,
//     "2006-01-02T15:04:05+00:00".
//   - Canonical JSON escapes DEL (U+007F) as \u007f, as CPython's
//     ensure_ascii encoder does.
//   - Responses are written like FastAPI's (UTF-8, not ASCII-escaped), with
//     payload numbers in the form Python re-serialises them (12.50 → 12.5).
//   - GET /stats on an empty chain answers last_event_id null and
//     latest_hash GenesisHash (64 zeros).
//   - GET /events: limit outside 1..100000 is 400; a limit that is not an
//     integer is 422 int_parsing, as FastAPI's query validation would answer;
//     an empty source means no source filter.
//   - GET /verify reports checked as the number of events found intact
//     before the first break (all of them when valid).
//   - GET /openapi.json serves the PublishRequest and GovernanceEvent schemas
//     exactly as shared/audit-stream-openapi-components.json holds them (a
//     copy is embedded from testdata/), with both kind enums listing the
//     kinds accepted right now (SetKinds); as on the real spine there is no
//     EventKind schema.
//
// Known gaps, where the double is stricter than the spine (a producer
// should not rely on any of these): Python's json module accepts NaN,
// Infinity and -Infinity literals, UTF-16/32 bodies and lone surrogate
// escapes (Go's decoder refuses the first two, and replaces lone surrogates
// by U+FFFD, which changes the hash); pydantic also accepts unix timestamps
// (numbers or numeric strings) for the timestamp, which the double refuses
// with 422. Payload floats that overflow to infinity are hashed as
// "Infinity" (as json.dumps does) and returned as null. GET /stream is not
// provided. The exact wording of the spine's own 400/404 messages is not
// documented by the contract and is a guess.
package spinetest
