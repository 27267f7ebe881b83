package store

import (
	"fmt"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// inbox_batches.data holds the callbacks of one group commit in the encoding of package
// callback (callback.AppendEncoded), the one spool records hold them in too. Postgres
// never looks inside; the merger decodes it here.

// decodeBatch is callback.DecodeEach for inbox_batches.data. Its errors say that an
// inbox batch is malformed: they are kept with the quarantined row.
func decodeBatch(data []byte, ids []int64, fn func(id uuid.UUID, receivedAt int64, ids []int64)) ([]int64, error) {
	ids, err := callback.DecodeEach(data, ids, fn)
	if err != nil {
		return ids, fmt.Errorf("malformed inbox batch: %w", err)
	}
	return ids, nil
}
