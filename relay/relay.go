// Package relay delivers a JetStream trail (package natsjs) into the
// audit-stream spine, exactly once and in order, so that teams keep the
// spine as their view while the replicated stream, not the audited
// database, holds the trail through a spine outage.
//
// The relay's position (the last stream sequence the spine holds) is kept
// in a replicated key-value bucket (natsjs.RelayBucket), saved with
// compare-and-set only after the spine accepted every message up to it.
// From there an ordered consumer hands the messages over in sequence order;
// each is checked as a link of the chain, turned back into the
// PublishRequest the agent would have sent the spine, and delivered with
// the spine client (pipelined, with its read-back). A relay stopped at any
// moment starts again after its saved position; the spine client's
// read-back skips what the spine already holds.
//
// A durable consumer's acknowledgements would not do: a restarted
// consumer delivers new messages before it redelivers the ones a stopped
// relay held unacknowledged (after their ack wait), which is out of order.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// Config configures Run.
type Config struct {
	Stream *natsjs.Client
	Spine  *publish.Client
	Name   string // the relay's name: its position's key (default pgaudit_cdc_relay)
	Batch  int    // most messages fetched and delivered at once (default 500)
	Logger *slog.Logger
	// Relayed, when set, is called with each message's sequence once the
	// spine holds it and the consumer acknowledged it.
	Relayed func(seq uint64)
}

// Run relays until ctx ends (nil) or the spine refuses an event or lost
// its history: then it stops with the sequence, acknowledging nothing from
// that message on.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Name == "" {
		cfg.Name = "pgaudit_cdc_relay"
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &relay{cfg: cfg, log: cfg.Logger}
	defer r.recordEnd(ctx)
	attempt := 0
	for ctx.Err() == nil {
		err := r.session(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		var stop *StopError
		if errors.As(err, &stop) {
			return err
		}
		if errors.Is(err, natsjs.ErrRelayMoved) {
			return fmt.Errorf("%w: run one relay per name (--name)", err)
		}
		d := backoff.Delay(attempt, 200*time.Millisecond, 30*time.Second)
		attempt++
		r.log.Warn("relay interrupted; nothing unacknowledged is lost, and it resumes from the first message the spine does not hold", "err", err, "retry_in", d.Round(time.Millisecond))
		if backoff.Sleep(ctx, d) != nil {
			return nil
		}
	}
	return nil
}

// StopError is a message the relay cannot deliver until someone acts.
type StopError struct {
	Seq uint64
	Err error
}

func (e *StopError) Error() string {
	return fmt.Sprintf("relay stopped at stream sequence %d, which is not acknowledged: %v", e.Seq, e.Err)
}
func (e *StopError) Unwrap() error { return e.Err }

type relay struct {
	cfg      Config
	log      *slog.Logger
	identity [2]string
	// resumed: the first batch after the saved position, which a relay
	// stopped before saving may have delivered already. The spine client
	// reads changes back before it sends them; KEY and SEAL events are
	// looked for here.
	resumed bool
	// marked: the in-flight record says this relay delivers (predecessor),
	// at revision markRev.
	marked  bool
	markRev uint64
}

// predecessor makes the first read-back wait for requests the relay before
// this one may have left in flight, and records that this one delivers.
// A request a relay sent can still be appended after it died (kill -9, a
// lost host): the spine finishes a request whose client left. Read back
// before it lands, its event would be sent twice. After a clean stop the
// wait is what that relay recorded it gave up on, if anything, counted
// from now (relays need not share a clock).
func (r *relay) predecessor(ctx context.Context) error {
	open, left, err := r.cfg.Stream.RelayInFlight(ctx, r.cfg.Name)
	if err != nil {
		return err
	}
	settle := r.cfg.Spine.SettleTime()
	if open {
		r.log.Warn("the relay before this one stopped without recording it (kill -9, a lost host); its first read-back waits for the requests it may have left in flight",
			"relay", r.cfg.Name, "wait", settle)
		left = settle
	}
	if left > 0 {
		r.cfg.Spine.InFlightUntil(time.Now().Add(min(left, settle)))
	}
	rev, err := r.cfg.Stream.OpenRelayInFlight(ctx, r.cfg.Name)
	if err != nil {
		return err
	}
	r.markRev, r.marked = rev, true
	return nil
}

// recordEnd records that this relay stopped, with how long the requests it
// gave up on could still land, so that the next one waits no longer than
// that. A record another relay of the name opened since is left alone.
func (r *relay) recordEnd(ctx context.Context) {
	if !r.marked {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.cfg.Stream.CloseRelayInFlight(ctx, r.cfg.Name, r.markRev, time.Until(r.cfg.Spine.QuietAt())); err != nil {
		r.log.Warn("could not record that the relay stopped; the next one waits for requests it may have left in flight before its first read-back",
			"relay", r.cfg.Name, "err", err)
	}
}

func (r *relay) session(ctx context.Context) error {
	if !r.marked {
		if err := r.predecessor(ctx); err != nil {
			return err
		}
	}
	pos, err := r.cfg.Stream.RelayPosition(ctx, r.cfg.Name)
	if err != nil {
		return err
	}
	next, err := r.cfg.Stream.Tail(ctx, pos.Seq+1)
	if err != nil {
		return err
	}
	r.log.Info("relaying", "from_seq", pos.Seq+1)
	r.resumed = true
	for ctx.Err() == nil {
		msgs, err := next(r.cfg.Batch, 2*time.Second)
		if err != nil {
			return fmt.Errorf("reading the stream: %w", err)
		}
		if len(msgs) == 0 {
			continue
		}
		var evs []*envelope.Event
		var seqs []uint64
		last := pos.Seq
		for _, m := range msgs {
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("reading a message's metadata: %w", err)
			}
			seq := md.Sequence.Stream
			if seq <= last {
				continue
			}
			last = seq
			ev, err := eventOf(seq, m.Data())
			if err != nil {
				r.log.Error("a message of the stream is not a chained event of pgaudit-cdc and is not relayed; verify --nats-url reports it",
					"seq", seq, "err", err, "fix", "allow only pgaudit-cdc's credentials to publish to the stream's subject")
				continue
			}
			evs, seqs = append(evs, ev), append(seqs, seq)
		}
		if err := r.deliver(ctx, evs, seqs); err != nil {
			return err
		}
		if pos, err = r.cfg.Stream.SaveRelayPosition(ctx, r.cfg.Name, pos, last); err != nil {
			return err
		}
		r.resumed = false
		if r.cfg.Relayed != nil {
			for _, s := range seqs {
				r.cfg.Relayed(s)
			}
		}
	}
	return nil
}

// deliver hands evs to the spine in order: runs of one identity's changes
// pipelined, KEY and SEAL events one by one.
func (r *relay) deliver(ctx context.Context, evs []*envelope.Event, seqs []uint64) error {
	for i := 0; i < len(evs); {
		ev := evs[i]
		if trail.IsTrailKey(ev.Key) {
			if r.identity[0] == "" {
				r.cfg.Spine.SetIdentity("relay", "relay")
			}
			if r.resumed {
				d := ev.Digest()
				held, err := r.cfg.Spine.HasEvent(ctx, ev.Source, ev.Key, d[:])
				if err != nil {
					return fmt.Errorf("reading the spine back: %w", err)
				}
				if held {
					i++
					continue
				}
			}
			if err := r.cfg.Spine.Publish(ctx, ev); err != nil {
				return r.refused(seqs[i], ev, err)
			}
			i++
			continue
		}
		sys, slot, pos, ok := envelope.ParseKey(ev.Key)
		if !ok {
			return &StopError{Seq: seqs[i], Err: fmt.Errorf("event without an idempotency key of pgaudit-cdc (%q)", ev.Key)}
		}
		ev.Pos = pos
		if r.identity != [2]string{sys, slot} {
			r.cfg.Spine.SetIdentity(sys, slot)
			r.identity = [2]string{sys, slot}
		}
		j := i + 1
		for j < len(evs) && !trail.IsTrailKey(evs[j].Key) {
			s, sl, p, ok := envelope.ParseKey(evs[j].Key)
			if !ok || s != sys || sl != slot {
				break
			}
			evs[j].Pos = p
			j++
		}
		var failed error
		at := i
		err := r.cfg.Spine.PublishBatch(ctx, evs[i:j], func(k int, err error) {
			if err != nil && failed == nil {
				failed, at = err, i+k
			}
		})
		if err == nil {
			err = failed
		}
		if err != nil {
			return r.refused(seqs[at], evs[at], err)
		}
		i = j
	}
	return nil
}

// refused stops the relay at a message the spine refused for good, or
// when the spine lost its history; anything else is retried.
func (r *relay) refused(seq uint64, ev *envelope.Event, err error) error {
	switch {
	case publish.IsRejected(err):
		return &StopError{Seq: seq, Err: fmt.Errorf("the spine refused the %s event %s (kind %q, source %q): %w; let the spine accept it, then start the relay again", ev.Operation, ev.Key, ev.Kind, ev.Source, err)}
	case publish.IsHistoryLost(err):
		return &StopError{Seq: seq, Err: fmt.Errorf("%w: the stream still holds the trail; to fill a new spine from it, delete the relay's consumer (nats consumer rm) and start the relay again", err)}
	}
	return err
}

// eventOf turns a stream message back into the event the agent delivered:
// the PublishRequest (kind, payload, source, timestamp) of a chained
// GovernanceEvent.
func eventOf(seq uint64, data []byte) (*envelope.Event, error) {
	if _, err := natsjs.Parse(seq, data); err != nil {
		return nil, err
	}
	// A GovernanceEvent holds the PublishRequest's members (kind, source,
	// timestamp, payload), and its own, which ParseEvent leaves aside.
	return envelope.ParseEvent(data)
}
