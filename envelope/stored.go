package envelope

import "encoding/json"

// The delivery marks: metadata members that describe a delivery, not the
// change (Envelope.Late, Redelivered, Supersedes). A verifier leaves them
// out of an event's digest, so that a mark never changes what the trail
// says of the change.
const (
	MarkLate        = "late"
	MarkRedelivered = "redelivered"
	MarkSupersedes  = "supersedes_event_id"
)

// DeliveryMarks lists them.
var DeliveryMarks = []string{MarkLate, MarkRedelivered, MarkSupersedes}

// Stored is what a read-back needs of a stored event: the spine's
// GovernanceEvent, or a JetStream message, which has its shape.
type Stored struct {
	EventID     int64
	Source      string
	Key         string // payload.metadata.idempotency_key
	Redelivered bool
	Late        bool
	CommitTime  string // payload.metadata.commit_timestamp, as written
}

// ReadStored reads a stored event's id, source, key, delivery marks and
// commit time; members it does not name are left aside.
func ReadStored(raw []byte) (Stored, error) {
	var e struct {
		EventID int64  `json:"event_id"`
		Source  string `json:"source"`
		Payload struct {
			Metadata struct {
				Key         string `json:"idempotency_key"`
				Redelivered bool   `json:"redelivered"`
				Late        bool   `json:"late"`
				CommitTime  string `json:"commit_timestamp"`
			} `json:"metadata"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return Stored{}, err
	}
	m := e.Payload.Metadata
	return Stored{EventID: e.EventID, Source: e.Source, Key: m.Key, Redelivered: m.Redelivered, Late: m.Late, CommitTime: m.CommitTime}, nil
}
