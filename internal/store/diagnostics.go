package store

import (
	"context"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// Inbox reads every callback in the inbox without taking it, oldest batch first: for
// tests and diagnostics.
func (s *Store) Inbox(ctx context.Context) ([]callback.Callback, error) {
	datas, err := s.q.InboxBatchData(ctx)
	if err != nil {
		return nil, err
	}
	var cbs []callback.Callback
	var scratch []int64
	for _, d := range datas {
		scratch, err = decodeBatch(d, scratch, func(id uuid.UUID, t int64, ids []int64) {
			cb := callback.Callback{ID: id, ReceivedAt: time.UnixMicro(t).UTC()}
			if len(ids) > 0 {
				cb.ObjectIDs = slices.Clone(ids)
			}
			cbs = append(cbs, cb)
		})
		if err != nil {
			return nil, err
		}
	}
	return cbs, nil
}
