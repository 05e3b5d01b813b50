// Package trail authenticates what pgaudit-cdc writes into the audit
// trail, so that nobody without the agent's signing key can add, remove or
// alter an event unnoticed, wherever the trail is stored. It is the one home
// of the promise "no event is forged".
//
// Every event the agent builds is digested at the source: SHA-256 over its
// envelope as encoded without delivery marks (Digest), which is the spine's
// canonical JSON of the event (package envelope), so a verifier recomputes
// the same digest from the spine's copy. The agent folds the digests of the
// events it delivered, in commit order, into a Sealer. At a bounded interval
// (in events and in time) the Sealer closes a Seal: the range of positions
// it covers, the number of events and the digest over theirs, linked to the
// previous seal by its hash and signed with Ed25519. The seal is an event of
// its own in the trail and, as the anchor, a row in the audited database.
// Nothing is confirmed to PostgreSQL beyond the last anchor, so a crash
// replays every event that is not sealed yet.
//
// A verifier with the public key (or its fingerprint, recorded in a signed
// KEY event and in the database) checks each seal's signature, the links
// between seals, that their ranges follow each other without a hole, and
// that the events it finds in each range digest to the sealed digest: an
// event added, removed or altered, or a whole transaction dropped with its
// links rewritten, breaks a seal. An event that claims the agent's identity
// outside every seal is not authentic.
package trail
