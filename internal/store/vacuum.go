package store

import (
	"context"
	"fmt"
)

// HotTables are the tables that churn: every row is inserted, changed and deleted
// within a window or so.
var HotTables = []string{"pending", "objects", "inbox_batches", "merged_batches"}

// DeadRows reads the dead tuples of each of HotTables.
func (s *Store) DeadRows(ctx context.Context) (map[string]int64, error) {
	r, err := s.q.DeadRows(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading dead rows: %w", err)
	}
	return map[string]int64{"pending": r.Pending, "objects": r.Objects, "inbox_batches": r.InboxBatches, "merged_batches": r.MergedBatches}, nil
}

// Vacuum vacuums one of HotTables, unless another session is vacuuming it right now.
func (s *Store) Vacuum(ctx context.Context, table string) error {
	var err error
	switch table {
	case "pending":
		err = s.q.VacuumPending(ctx)
	case "objects":
		err = s.q.VacuumObjects(ctx)
	case "inbox_batches":
		err = s.q.VacuumInboxBatches(ctx)
	case "merged_batches":
		err = s.q.VacuumMergedBatches(ctx)
	default:
		return fmt.Errorf("not a hot table: %q", table)
	}
	if err != nil {
		return fmt.Errorf("vacuuming %s: %w", table, err)
	}
	return nil
}
