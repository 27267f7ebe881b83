package spool

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

var heldT0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func heldAt(s int) time.Time { return heldT0.Add(time.Duration(s) * time.Second) }

func TestOldestHeld(t *testing.T) {
	t.Parallel()
	floor := heldAt(-100)

	t.Run("nothing_spooled_holds_nothing", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		_, held := s.OldestHeld(floor)
		if held {
			t.Fatal("an empty spool holds something")
		}
	})

	t.Run("the_active_segment_holds_its_oldest_receipt", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		mustAppend(t, s, callback.New(heldAt(5), []int64{1}), callback.New(heldAt(3), []int64{2}))
		mustAppend(t, s, callback.New(heldAt(9), []int64{3}))
		requireHeld(t, s, floor, heldAt(3))
	})

	t.Run("never_older_than_the_floor", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		mustAppend(t, s, callback.New(heldAt(-500), []int64{1}))
		requireHeld(t, s, floor, floor)
	})

	t.Run("a_sealed_segment_left_by_a_dead_process_is_held_by_every_live_one", func(t *testing.T) {
		t.Parallel()
		dead, dir := setup(t)
		mustAppend(t, dead, callback.New(heldAt(7), []int64{1}))
		live := open(t, dir)
		_, held := live.OldestHeld(floor)
		if held {
			t.Fatal("a live process counted another live process's active segment")
		}
		if err := dead.Close(); err != nil { // its lock goes, as with kill -9
			t.Fatal(err)
		}
		requireHeld(t, live, floor, heldAt(7))
	})

	t.Run("a_segment_being_replayed_is_held_by_its_replayer_until_committed", func(t *testing.T) {
		t.Parallel()
		writer, dir := setup(t)
		mustAppend(t, writer, callback.New(heldAt(4), []int64{1}))
		if err := writer.Close(); err != nil {
			t.Fatal(err)
		}
		replayer, other := open(t, dir), open(t, dir)
		_, err := replayer.Replay(context.Background(), func(context.Context, uuid.UUID, []callback.Batch) error {
			requireHeld(t, replayer, floor, heldAt(4))
			if _, held := other.OldestHeld(floor); held {
				t.Error("a segment locked by its replayer was counted by another process too")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, held := replayer.OldestHeld(floor); held {
			t.Fatal("a replayed segment is still held")
		}
	})
}

func TestReplicaID(t *testing.T) {
	t.Parallel()
	a, dir := setup(t)
	idA, err := a.ReplicaID()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := a.ReplicaID(); again != idA {
		t.Fatalf("a second call changed the identity: %s, %s", idA, again)
	}
	b := open(t, dir)
	idB, err := b.ReplicaID()
	if err != nil {
		t.Fatal(err)
	}
	if idA == idB {
		t.Fatalf("two live processes on one directory share the identity %s", idA)
	}
	if dead, _ := b.DeadReplicas(); len(dead) != 0 {
		t.Fatalf("a live slot is reported dead: %v", dead)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if dead, _ := b.DeadReplicas(); len(dead) != 1 || dead[0] != idA {
		t.Fatalf("the slot of a closed process is not reported dead: %v", dead)
	}
	restarted := open(t, dir)
	idR, err := restarted.ReplicaID()
	if err != nil {
		t.Fatal(err)
	}
	if idR != idA {
		t.Fatalf("a process restarted on the directory did not take the free slot back: %s, want %s", idR, idA)
	}
	other, _ := setup(t)
	idO, _ := other.ReplicaID()
	if idO[:36] == idA[:36] {
		t.Fatalf("two directories share a host id: %s, %s", idO, idA)
	}
}

func requireHeld(t *testing.T, s *Spool, floor, want time.Time) {
	t.Helper()
	got, held := s.OldestHeld(floor)
	if !held || !got.Equal(want) {
		t.Fatalf("OldestHeld = %v, %v; want %v, true", got, held, want)
	}
}
