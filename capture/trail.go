package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// ReasonSpineHistoryLost is the gap reason of a destination that lost or
// rewrote events the agent had delivered (an in-memory spine restarted, a
// restore to an older state).
const ReasonSpineHistoryLost = "spine_history_lost"

// Anchor is the newest seal of a slot's chain as the audited database
// recorded it.
type Anchor struct {
	trail.Anchor
	// LostAcknowledged: an operator accepted that the destination lost the
	// events up to this seal.
	LostAcknowledged bool
	// AcknowledgedTotal counts the events of the chain an operator
	// accepted as lost before FirstKey (migration 0017).
	AcknowledgedTotal uint64
	RecordedAt        time.Time
}

// LostRange is what a destination that lost everything up to this anchor
// lost: the chain's first sealed event (after a loss an operator accepted,
// the first sealed since) to the anchor's last, and how many.
func (a Anchor) LostRange() envelope.GapLostRange {
	r := envelope.GapLostRange{FirstKey: a.FirstKey, LastKey: a.ToKey, Count: a.Total - a.AcknowledgedTotal}
	if r.Count == 0 {
		// Nothing sealed since the loss an operator accepted.
		r.FirstKey, r.LastKey = "", ""
	}
	return r
}

// LoadAnchor reads slot's anchor; ok is false before the first seal.
func LoadAnchor(ctx context.Context, conn *pgx.Conn, slot string) (a Anchor, ok bool, err error) {
	var to string
	err = conn.QueryRow(ctx, `SELECT chain, seq, hash, system_identifier, key_slot, to_position, to_key, to_source,
			first_key, total, seal_event, lost_acknowledged, acknowledged_total, recorded_at
		FROM pgaudit_cdc.trail_anchors WHERE slot_name = $1`, slot).Scan(
		&a.Chain, &a.Seq, &a.Hash, &a.SystemID, &a.Slot, &to, &a.ToKey, &a.ToSource,
		&a.FirstKey, &a.Total, &a.Event, &a.LostAcknowledged, &a.AcknowledgedTotal, &a.RecordedAt)
	if errors.Is(err, pgx.ErrNoRows) || isUndefinedTable(err) {
		// No seal yet, or a schema from before signed trails (the next
		// run migrates it).
		return Anchor{}, false, nil
	}
	if err != nil {
		return Anchor{}, false, fmt.Errorf("reading the trail's anchor: %w", err)
	}
	pos, ok := envelope.ParsePosition(to)
	if !ok {
		return Anchor{}, false, fmt.Errorf("reading the trail's anchor: position %q is unreadable", to)
	}
	a.To = pos
	return a, true, nil
}

// ErrAnchorTaken says the seal's number was recorded already, by another
// instance of the agent on the same slot (an active and a standby).
var ErrAnchorTaken = errors.New("another instance recorded a seal of this trail with the same or a later number")

// SaveAnchor records a as slot's anchor. It returns ErrAnchorTaken when a
// seal with the same or a later number is recorded already: the record is
// how concurrent agents agree on the chain. The first key of the chain is
// kept from the first anchor, or from the first after an accepted loss of
// the trail from its start (acknowledgeLost).
func SaveAnchor(ctx context.Context, conn *pgx.Conn, slot string, a Anchor) error {
	tag, err := conn.Exec(ctx, `INSERT INTO pgaudit_cdc.trail_anchors AS t (slot_name, chain, seq, hash, system_identifier,
			key_slot, to_position, to_key, to_source, first_key, total, seal_event)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		ON CONFLICT (slot_name) DO UPDATE SET chain = EXCLUDED.chain, seq = EXCLUDED.seq, hash = EXCLUDED.hash,
			system_identifier = EXCLUDED.system_identifier, key_slot = EXCLUDED.key_slot,
			to_position = EXCLUDED.to_position, to_key = EXCLUDED.to_key, to_source = EXCLUDED.to_source,
			total = EXCLUDED.total, seal_event = EXCLUDED.seal_event, lost_acknowledged = false, recorded_at = now(),
			first_key = CASE WHEN t.first_key = '' THEN EXCLUDED.first_key ELSE t.first_key END
		WHERE t.seq < EXCLUDED.seq`,
		slot, a.Chain, int64(a.Seq), a.Hash, a.SystemID, a.Slot, a.To.String(), a.ToKey, a.ToSource, a.FirstKey,
		int64(a.Total), string(a.Event))
	if err != nil {
		return fmt.Errorf("recording the trail's anchor (seal %d): %w", a.Seq, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("recording seal %d: %w", a.Seq, ErrAnchorTaken)
	}
	return nil
}

// SigningKey is one key recorded for a slot's trail.
type SigningKey struct {
	Fingerprint string
	PublicKey   string
	Previous    string
	KeyEvent    string
	CreatedAt   time.Time
	Sent        bool
}

// SigningKeys lists the keys recorded for slot's trail, oldest first.
func SigningKeys(ctx context.Context, conn *pgx.Conn, slot string) ([]SigningKey, error) {
	rows, err := conn.Query(ctx, `SELECT fingerprint, public_key, coalesce(previous, ''), key_event, created_at, sent_at IS NOT NULL
		FROM pgaudit_cdc.signing_keys WHERE slot_name = $1 ORDER BY created_at, fingerprint`, slot)
	if err != nil {
		return nil, fmt.Errorf("reading the trail's signing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SigningKey, error) {
		var k SigningKey
		err := r.Scan(&k.Fingerprint, &k.PublicKey, &k.Previous, &k.KeyEvent, &k.CreatedAt, &k.Sent)
		return k, err
	})
	if isUndefinedTable(err) {
		return nil, nil // a schema from before signed trails
	}
	if err != nil {
		return nil, fmt.Errorf("reading the trail's signing keys: %w", err)
	}
	return keys, nil
}

// AddSigningKey records a key introduced into slot's trail by keyEvent.
func AddSigningKey(ctx context.Context, conn *pgx.Conn, slot string, k SigningKey) error {
	var previous *string
	if k.Previous != "" {
		previous = &k.Previous
	}
	if _, err := conn.Exec(ctx, `INSERT INTO pgaudit_cdc.signing_keys (slot_name, fingerprint, public_key, previous, key_event)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, slot, k.Fingerprint, k.PublicKey, previous, k.KeyEvent); err != nil {
		return fmt.Errorf("recording the signing key %s: %w", k.Fingerprint, err)
	}
	return nil
}

// MarkKeySent records that the destination accepted the KEY event of fp.
func MarkKeySent(ctx context.Context, conn *pgx.Conn, slot, fp string) error {
	if _, err := conn.Exec(ctx, `UPDATE pgaudit_cdc.signing_keys SET sent_at = now()
		WHERE slot_name = $1 AND fingerprint = $2 AND sent_at IS NULL`, slot, fp); err != nil {
		return fmt.Errorf("recording that the KEY event of %s was sent: %w", fp, err)
	}
	return nil
}

// RecordSpineGap records a gap the destination caused: it lost the events
// lost names. It returns the pending gap (an earlier one when a gap was
// pending already) and whether this one is new.
func RecordSpineGap(ctx context.Context, conn *pgx.Conn, slot, detail string, lost envelope.GapLostRange, systemID string, timeline int32) (*GapRecord, bool, error) {
	js, err := json.Marshal(lost)
	if err != nil {
		return nil, false, fmt.Errorf("BUG: encoding a lost range: %w", err)
	}
	return recordGap(ctx, conn, slot, Assessment{Verdict: Gap, Reason: ReasonSpineHistoryLost, Detail: detail}, systemID, timeline, js)
}

// acknowledgeLost marks the anchor's seal as lost with the operator's
// consent, in the transaction that completes the gap. When the destination
// lost the trail from its start (lost names its first key), what a later
// loss can take begins with the next seal: first_key is cleared for it to
// set (SaveAnchor), and the events accepted as lost are counted out. After a
// loss of only the newest events, the trail still holds the older ones,
// and a later loss would take them too: the range stays.
func acknowledgeLost(ctx context.Context, tx pgx.Tx, slot string, lost *envelope.GapLostRange) error {
	fromStart := lost != nil && lost.FirstKey != ""
	if _, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.trail_anchors SET lost_acknowledged = true,
			first_key = CASE WHEN $2 THEN '' ELSE first_key END,
			acknowledged_total = CASE WHEN $2 THEN total ELSE acknowledged_total END
		WHERE slot_name = $1`, slot, fromStart); err != nil {
		return fmt.Errorf("acknowledging the lost trail: %w", err)
	}
	return nil
}

// isUndefinedTable reports a table the schema does not have yet.
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable
}
