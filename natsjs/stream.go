package natsjs

import (
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultDuplicates is the duplicate window of a stream pgaudit-cdc
// creates: how long JetStream remembers a Nats-Msg-Id.
const DefaultDuplicates = 2 * time.Minute

// Want is what the stream must be: the settings pgaudit-cdc creates it
// with, and the floor an existing stream is checked against.
type Want struct {
	Stream   string
	Subject  string
	Replicas int
	// Duplicates is the duplicate window to create the stream with; an
	// existing stream needs one, of any length.
	Duplicates time.Duration
}

// Config is the stream configuration pgaudit-cdc creates.
func (w Want) Config() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        w.Stream,
		Description: "pgaudit-cdc audit trail: append-only, one hash chain, written only by pgaudit-cdc",
		Subjects:    []string{w.Subject},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		MaxAge:      0,
		Storage:     jetstream.FileStorage,
		Replicas:    w.Replicas,
		Duplicates:  w.Duplicates,
		DenyDelete:  true,
		DenyPurge:   true,
		AllowRollup: false,
		AllowDirect: true,
	}
}

// Problem is one way an existing stream is weaker than the trail needs:
// the setting, what it is, and what to do.
type Problem struct {
	Setting string
	Have    string
	Fix     string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s is %s: %s", p.Setting, p.Have, p.Fix)
}

// Check compares an existing stream's configuration with w: every setting
// that would let the trail lose, reorder or rewrite a message, or let
// another writer into its one subject, is a Problem. Settings that only
// make it stronger (more replicas, a longer duplicate window) pass.
func (w Want) Check(c jetstream.StreamConfig) []Problem {
	var ps []Problem
	add := func(setting, have, fix string) { ps = append(ps, Problem{setting, have, fix}) }
	if !slices.Equal(c.Subjects, []string{w.Subject}) {
		add("subjects", fmt.Sprint(c.Subjects), fmt.Sprintf("the stream must hold exactly one subject, %q, written only by this pgaudit-cdc (its sequence is the chain's): use a stream of its own (--nats-stream) or set --nats-subject to the stream's one subject", w.Subject))
	}
	if c.Storage != jetstream.FileStorage {
		add("storage", c.Storage.String(), "a memory stream loses the trail when its servers restart: create the stream with file storage")
	}
	if c.Retention != jetstream.LimitsPolicy {
		add("retention", c.Retention.String(), "work-queue and interest retention delete messages once they are consumed: create the stream with limits retention")
	}
	if !c.DenyDelete {
		add("deny_delete", "false", "anyone with stream rights could delete a message from the trail: set deny_delete (nats stream edit --deny-delete)")
	}
	if !c.DenyPurge {
		add("deny_purge", "false", "anyone with stream rights could purge the trail: set deny_purge (nats stream edit --deny-purge)")
	}
	if c.AllowRollup {
		add("allow_rollup_hdrs", "true", "a rollup message would erase the trail before it: create the stream without rollups")
	}
	if c.Discard == jetstream.DiscardOld && (c.MaxMsgs > 0 || c.MaxBytes > 0 || c.MaxMsgsPerSubject > 0) {
		add("discard", "old, with limits", "the oldest messages would be dropped from the trail once a limit is reached: remove max_msgs, max_bytes and max_msgs_per_subject, or use discard new (writes then stop loudly at the limit)")
	}
	if c.MaxAge > 0 {
		add("max_age", c.MaxAge.String(), "messages would expire from the trail: remove max_age")
	}
	if c.Replicas < w.Replicas {
		add("num_replicas", fmt.Sprint(c.Replicas), fmt.Sprintf("a message is acknowledged once a quorum of %d stored it, and %d replicas were asked for (--nats-replicas): raise the stream's replicas", c.Replicas, w.Replicas))
	}
	if c.Duplicates <= 0 {
		add("duplicate_window", "0", "a retried message could not be recognised by its Nats-Msg-Id: set a duplicate window (2m)")
	}
	if c.NoAck {
		add("no_ack", "true", "the stream acknowledges nothing, so nothing could be confirmed: create it with acknowledgements")
	}
	if c.PersistMode == jetstream.AsyncPersistMode {
		add("persist_mode", "async", "the stream acknowledges before the message is on disk: use the default persist mode")
	}
	if c.Sealed {
		add("sealed", "true", "a sealed stream takes no more messages: give pgaudit-cdc a new stream")
	}
	if c.Mirror != nil || len(c.Sources) > 0 {
		add("sources", "set", "a mirror or sourcing stream is written by JetStream, not by pgaudit-cdc: use a stream without mirror or sources")
	}
	if c.SubjectTransform != nil {
		add("subject_transform", "set", "remove the subject transform")
	}
	if c.AllowMsgTTL || c.SubjectDeleteMarkerTTL > 0 {
		add("allow_msg_ttl", "true", "a message could carry its own expiry: create the stream without per-message TTLs")
	}
	if c.AllowMsgCounter {
		add("allow_msg_counter", "true", "a counter stream rewrites what it stores: use a plain stream")
	}
	if c.AllowMsgSchedules {
		add("allow_msg_schedules", "true", "scheduled messages are written by JetStream, not by pgaudit-cdc: create the stream without message schedules")
	}
	return ps
}
