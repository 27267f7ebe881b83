// Package callback holds the domain type at the centre of the service: one accepted
// callback, as it travels from the HTTP handler into the inbox (or the outage spool),
// and the binary encoding that both keep callbacks in (encoding.go).
package callback

import (
	"time"

	"github.com/google/uuid"
)

// Callback is one accepted POST /callback.
type Callback struct {
	// ID is minted when the request arrives (UUIDv7: time-ordered). It travels with the
	// callback into its inbox batch or spool record, and names it in logs and tests.
	ID uuid.UUID
	// ReceivedAt is the service's clock when the request arrived. It becomes last_seen
	// of every object the callback names.
	ReceivedAt time.Time
	// ObjectIDs as sent: may be empty, may repeat ids.
	ObjectIDs []int64
}

// New mints a callback received at t.
func New(t time.Time, ids []int64) Callback {
	return Callback{ID: uuid.Must(uuid.NewV7()), ReceivedAt: t, ObjectIDs: ids}
}

// Batch is the callbacks of one group commit under the id the committer minted for it
// (UUIDv7) before writing them: the inbox row's batch_id and, when that write's outcome
// is unknown, the spool record's too, so that a batch made durable twice is merged once.
// ID is zero for callbacks read from a spool segment written before batches had ids.
type Batch struct {
	ID        uuid.UUID
	Callbacks []Callback
}
