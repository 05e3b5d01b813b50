package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RelayBucket is the key-value bucket where relays keep their position.
const RelayBucket = "PGAUDIT_CDC_RELAY"

// Position is where a relay stands: the last stream sequence the spine
// holds, and the revision it was saved at (for the next compare-and-set).
type Position struct {
	Seq, Revision uint64
}

// relayPositions opens (or makes) the replicated bucket of relay positions.
func (c *Client) relayPositions(ctx context.Context) (jetstream.KeyValue, error) {
	actx, cancel := c.api(ctx)
	defer cancel()
	kv, err := c.js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{Bucket: RelayBucket,
		Description: "pgaudit-cdc relay positions", History: 1, Storage: jetstream.FileStorage, Replicas: c.WantReplicas()})
	if err != nil {
		return nil, fmt.Errorf("opening the relay position bucket %s: %w", RelayBucket, c.explainAPI(err))
	}
	return kv, nil
}

// RelayPosition reads relay name's position (zero: it starts at the
// stream's first message).
func (c *Client) RelayPosition(ctx context.Context, name string) (Position, error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return Position{}, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	e, err := kv.Get(actx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, fmt.Errorf("reading the position of relay %s: %w", name, err)
	}
	seq, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("the position of relay %s in bucket %s is %q, not a sequence", name, RelayBucket, e.Value())
	}
	return Position{Seq: seq, Revision: e.Revision()}, nil
}

// ErrRelayMoved: another relay of the same name saved a position since
// this one read it.
var ErrRelayMoved = errors.New("another relay of this name moved the position")

// SaveRelayPosition saves seq as relay name's position, if it is still at
// p (compare-and-set), and returns the new position.
func (c *Client) SaveRelayPosition(ctx context.Context, name string, p Position, seq uint64) (Position, error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return p, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	value := []byte(strconv.FormatUint(seq, 10))
	var rev uint64
	if p.Revision == 0 {
		rev, err = kv.Create(actx, name, value)
	} else {
		rev, err = kv.Update(actx, name, value, p.Revision)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return p, fmt.Errorf("saving the position of relay %s: %w", name, ErrRelayMoved)
	}
	if err != nil {
		return p, fmt.Errorf("saving the position of relay %s: %w", name, err)
	}
	return Position{Seq: seq, Revision: rev}, nil
}

// Tail reads the stream from sequence first on, in order, through an
// ordered consumer: next returns the messages that came within wait.
func (c *Client) Tail(ctx context.Context, first uint64) (next func(max int, wait time.Duration) ([]jetstream.Msg, error), err error) {
	s, err := c.openStream(ctx)
	if err != nil {
		return nil, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if first > 1 {
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first}
	}
	cons, err := s.OrderedConsumer(actx, cfg)
	if err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	return func(n int, wait time.Duration) ([]jetstream.Msg, error) {
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(wait))
		if err != nil {
			return nil, err
		}
		var out []jetstream.Msg
		for m := range batch.Messages() {
			out = append(out, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return out, err
		}
		return out, nil
	}, nil
}

// relayInFlightKey is the key of relay name's in-flight record, beside its
// position.
func relayInFlightKey(name string) string { return name + ".in_flight" }

// relayOpen is the in-flight record of a relay that delivers; a stopped
// relay's record is how long its given-up requests could still land, in
// nanoseconds, from when it stopped.
const relayOpen = "open"

// RelayInFlight reads relay name's in-flight record: open when a relay of
// that name delivers or died delivering (it did not record its end), else
// how long after it stopped the requests it gave up on could still land
// at the spine (zero: none, or nothing recorded).
func (c *Client) RelayInFlight(ctx context.Context, name string) (open bool, left time.Duration, err error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return false, 0, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	e, err := kv.Get(actx, relayInFlightKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("reading the in-flight record of relay %s: %w", name, err)
	}
	ns, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if string(e.Value()) == relayOpen || err != nil || ns < 0 {
		return true, 0, nil // unreadable counts as open: the safe side
	}
	return false, time.Duration(ns), nil
}

// OpenRelayInFlight records that relay name delivers, and returns the
// record's revision: only the relay that wrote it closes it.
func (c *Client) OpenRelayInFlight(ctx context.Context, name string) (uint64, error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return 0, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	rev, err := kv.PutString(actx, relayInFlightKey(name), relayOpen)
	if err != nil {
		return 0, fmt.Errorf("recording that relay %s delivers: %w", name, err)
	}
	return rev, nil
}

// CloseRelayInFlight records that the relay that opened the record at rev
// stopped, and that the requests it gave up on could still land for left.
// A record another relay of that name opened since is left alone.
func (c *Client) CloseRelayInFlight(ctx context.Context, name string, rev uint64, left time.Duration) error {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	_, err = kv.Update(actx, relayInFlightKey(name), []byte(strconv.FormatInt(int64(max(left, 0)), 10)), rev)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil // another relay's record now
	}
	if err != nil {
		return fmt.Errorf("recording that relay %s stopped: %w", name, err)
	}
	return nil
}
