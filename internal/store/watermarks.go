package store

import (
	"context"
	"fmt"
	"time"

	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// PublishWatermark writes this replica's heartbeat: low is the oldest receipt it holds
// outside the inbox (see internal/watermark); stopped says it shut down holding nothing.
func (s *Store) PublishWatermark(ctx context.Context, replicaID string, low time.Time, stopped bool) error {
	if err := s.q.PublishWatermark(ctx, dbsqlc.PublishWatermarkParams{ReplicaID: replicaID, LowWatermark: low, Stopped: stopped}); err != nil {
		return fmt.Errorf("publishing watermark of %s: %w", replicaID, err)
	}
	return nil
}

// Fleet is what the replicas' heartbeats say, for expiry.
type Fleet struct {
	// Lowest is the lowest watermark of the replicas that may still hold callbacks
	// (heard from within the silence bound, not stopped); zero if there are none.
	Lowest time.Time
	Live   int64 // replicas heard from within the bound
	Silent int64 // replicas not heard from within it, not stopped: no longer counted
}

// FleetWatermark reads the fleet's low watermark, counting the replicas heard from
// within silence (on the database's clock).
func (s *Store) FleetWatermark(ctx context.Context, silence time.Duration) (Fleet, error) {
	r, err := s.q.FleetWatermark(ctx, silence.Milliseconds())
	if err != nil {
		return Fleet{}, fmt.Errorf("reading the fleet's watermark: %w", err)
	}
	f := Fleet{Live: r.Live, Silent: r.Silent}
	if r.Live > 0 {
		f.Lowest = r.Lowest
	}
	return f, nil
}

// DeleteWatermark deletes the row of a replica known to be gone.
func (s *Store) DeleteWatermark(ctx context.Context, replicaID string) error {
	if _, err := s.q.DeleteWatermark(ctx, replicaID); err != nil {
		return fmt.Errorf("deleting watermark of %s: %w", replicaID, err)
	}
	return nil
}
