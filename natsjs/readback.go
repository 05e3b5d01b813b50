package natsjs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// sync reads the stream's state: where its chain stands, whether it still
// holds the history this process saw, and which of this identity's events
// it holds among its newest messages.
func (c *Client) sync(ctx context.Context) error {
	info, err := c.info(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		c.stream = nil
		if c.highest > 0 {
			// The stream this process delivered into is gone.
			return &publish.HistoryLostError{Previous: int64(c.highest), Got: 0}
		}
	}
	if err != nil {
		return err
	}
	if c.created.IsZero() {
		c.created = info.Created
	}
	last := info.State.LastSeq
	if !info.Created.Equal(c.created) || last < c.highest {
		return &publish.HistoryLostError{Previous: int64(c.highest), Got: int64(last)}
	}
	if ps := c.want.Check(info.Config); len(ps) > 0 {
		c.stream = nil
		return &StreamError{Stream: c.cfg.Stream, Problems: ps}
	}
	present := map[string][]storedCopy{}
	head := Link{Seq: last, Hash: chain.Genesis}
	var chained bool
	first := info.State.FirstSeq
	if last >= uint64(c.cfg.ReadBack) {
		first = max(first, last-uint64(c.cfg.ReadBack)+1)
	}
	// The newest chained message is what the next event links to; the
	// stream is read newest last, so it is the last one seen.
	err = c.scan(ctx, first, last, func(seq uint64, data []byte) {
		if e, err := Parse(seq, data); err == nil {
			head.Hash, chained = e.Hash, true
		}
		key, ok := keyOf(data)
		if !ok {
			return
		}
		if sys, slot, _, ok := envelope.ParseKey(key); !trail.IsTrailKey(key) && (!ok || sys != c.systemID || slot != c.slot) {
			return
		}
		if d, err := trail.StoredDigest(data); err == nil {
			present[key] = append(present[key], storedCopy{seq: seq, digest: d})
		}
	})
	if err != nil {
		return err
	}
	if !chained && last > 0 && first > info.State.FirstSeq {
		c.log.Warn("none of the stream's newest messages is a chained event; the next event starts a new chain", "stream", c.cfg.Stream, "last_seq", last)
	}
	c.head, c.present, c.synced = head, present, true
	c.highest = max(c.highest, last)
	if !c.sendFailed {
		// The stream answers; after a failed send, only an acknowledgement
		// says the destination takes messages again (a missing publish
		// permission still lets the stream be read).
		c.up(true)
	}
	return nil
}

// keyOf reads payload.metadata.idempotency_key of a stored message.
func keyOf(data []byte) (string, bool) {
	st, _, err := publish.ReadStored(data)
	return st.Key, err == nil && st.Key != ""
}

// scan calls fn with every message from sequence first to last, in order,
// through an ordered consumer.
func (c *Client) scan(ctx context.Context, first, last uint64, fn func(seq uint64, data []byte)) error {
	if first == 0 || first > last {
		return nil
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	cons, err := c.stream.OrderedConsumer(actx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first})
	if err != nil {
		return fmt.Errorf("reading the stream back: %w", c.explainAPI(err))
	}
	// A consumer just made on a replicated stream may not answer for a
	// moment: "no responders", from the fetch request or as the batch's
	// error, is asked again until the API timeout passes without progress.
	retryUntil := time.Now().Add(c.apiWait())
	retry := func(err error) bool {
		if !errors.Is(err, nats.ErrNoResponders) || !time.Now().Before(retryUntil) {
			return false
		}
		return backoff.Sleep(ctx, 50*time.Millisecond) == nil
	}
	for next := first; next <= last; {
		batch, err := cons.Fetch(int(min(last-next+1, 500)), jetstream.FetchMaxWait(5*time.Second))
		if retry(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the stream back from sequence %d: %w", next, err)
		}
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("reading the stream back: %w", err)
			}
			got++
			seq := md.Sequence.Stream
			if seq > last {
				return nil
			}
			fn(seq, m.Data())
			next = seq + 1
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			if got == 0 && retry(err) {
				continue
			}
			return fmt.Errorf("reading the stream back from sequence %d: %w", next, err)
		}
		if got > 0 {
			retryUntil = time.Now().Add(c.apiWait())
		}
		if got == 0 {
			return fmt.Errorf("reading the stream back: no message came at sequence %d of %d", next, last)
		}
	}
	return nil
}

// Scan calls fn with every message of the stream from sequence first to
// the last one stored when Scan starts, in order (verify, relay, tests).
func (c *Client) Scan(ctx context.Context, first uint64, fn func(seq uint64, data []byte)) error {
	info, err := c.info(ctx)
	if err != nil {
		return err
	}
	return c.scan(ctx, max(first, info.State.FirstSeq), info.State.LastSeq, fn)
}

// ReadBack calls fn with each of the stream's newest Config.ReadBack
// messages of source (every source: ""), oldest first (the trail's seals
// are read so).
func (c *Client) ReadBack(ctx context.Context, source string, fn func(publish.Stored)) error {
	info, err := c.info(ctx)
	if err != nil {
		return err
	}
	last, first := info.State.LastSeq, info.State.FirstSeq
	if last >= uint64(c.cfg.ReadBack) {
		first = max(first, last-uint64(c.cfg.ReadBack)+1)
	}
	return c.scan(ctx, first, last, func(seq uint64, data []byte) {
		st, src, err := publish.ReadStored(data)
		if err != nil || source != "" && src != source {
			return
		}
		st.EventID = int64(seq)
		fn(st)
	})
}

// LastDelivered returns the highest position among the events of systemID
// and keySlot in the stream's newest Config.ReadBack messages, with that
// event's commit timestamp (zero when none is found): where the next event
// links to, and where a capture gap begins. With before set, only events of
// transactions committed before it count. The stream holds every source,
// so sources is not needed.
func (c *Client) LastDelivered(ctx context.Context, systemID, keySlot string, _ []string, before pgoutput.LSN) (envelope.Position, string, error) {
	var last envelope.Position
	var commitTime string
	err := c.ReadBack(ctx, "", func(e publish.Stored) {
		sys, slot, pos, ok := envelope.ParseKey(e.Key)
		// A transaction whose commit record starts at before is replayed;
		// a GAP event (sequence 0) at before is not.
		if !ok || before != 0 && (pos.CommitLSN > before || pos.CommitLSN == before && pos.Seq > 0) {
			return
		}
		if sys == systemID && slot == keySlot && last.Less(pos) {
			last, commitTime = pos, e.CommitTime
		}
	})
	return last, commitTime, err
}

// HasEvent reports whether the stream's newest messages of source include
// key on content whose digest starts with digest (any content when nil).
func (c *Client) HasEvent(ctx context.Context, source, key string, digest []byte) (bool, error) {
	return publish.Holds(ctx, c.ReadBack, source, key, digest)
}
