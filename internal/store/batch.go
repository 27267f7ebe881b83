package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// The encoding of inbox_batches.data: every callback of one group commit in one bytea.
// Postgres never looks inside; the merger decodes it here.
//
// Version 1, written by the committer and by spool replay:
//
//	version      1 byte: 1
//	then for each callback, to the end of the data:
//	  callback id  16 bytes
//	  received_at  zig-zag varint: Unix microseconds (the precision of timestamptz),
//	               as the difference from the previous callback's (the first's from 0)
//	  count        uvarint: how many object ids follow
//	  object ids   count zig-zag varints, each the difference from the previous id
//	               (the first's from 0)
//
// The handler sends ids sorted and distinct, so the differences are small and positive:
// a callback of 200 ids from 0..99 takes about 130 bytes instead of 1,600 as bigint[].
// Any order still round-trips (differences may be negative; the arithmetic wraps both
// ways).
//
// Version 0, written only by the migration that introduced batches, for callbacks
// accepted before it: exactly one callback, with fixed-width big-endian fields (what
// SQL can build):
//
//	version      1 byte: 0
//	callback id  16 bytes
//	received_at  8 bytes: Unix microseconds
//	object ids   8 bytes each, to the end of the data
const batchVersion = 1

// appendBatch encodes cbs in version 1 onto dst.
func appendBatch(dst []byte, cbs []callback.Callback) []byte {
	dst = append(dst, batchVersion)
	var prevT int64
	for _, cb := range cbs {
		dst = append(dst, cb.ID[:]...)
		t := cb.ReceivedAt.UnixMicro()
		dst = binary.AppendVarint(dst, t-prevT)
		prevT = t
		dst = binary.AppendUvarint(dst, uint64(len(cb.ObjectIDs)))
		var prev int64
		for _, id := range cb.ObjectIDs {
			dst = binary.AppendVarint(dst, id-prev)
			prev = id
		}
	}
	return dst
}

var errBadBatch = errors.New("malformed inbox batch")

// decodeBatch calls fn for each callback in data, in order, with its receipt time in Unix
// microseconds and its ids. ids is scratch space that is reused and returned, so fn must
// not keep the slice it is given.
func decodeBatch(data []byte, ids []int64, fn func(id uuid.UUID, receivedAt int64, ids []int64)) ([]int64, error) {
	if len(data) == 0 {
		return ids, errBadBatch
	}
	version, p := data[0], data[1:]
	switch version {
	case 0:
		if len(p) < 24 || (len(p)-24)%8 != 0 {
			return ids, fmt.Errorf("%w: version 0 of %d bytes", errBadBatch, len(data))
		}
		id := uuid.UUID(p[:16])
		t := int64(binary.BigEndian.Uint64(p[16:24]))
		ids = ids[:0]
		for q := p[24:]; len(q) > 0; q = q[8:] {
			ids = append(ids, int64(binary.BigEndian.Uint64(q)))
		}
		fn(id, t, ids)
		return ids, nil
	case 1:
		var prevT int64
		for len(p) > 0 {
			if len(p) < 16 {
				return ids, fmt.Errorf("%w: truncated callback id", errBadBatch)
			}
			id := uuid.UUID(p[:16])
			p = p[16:]
			dt, n := binary.Varint(p)
			if n <= 0 {
				return ids, fmt.Errorf("%w: bad receipt time", errBadBatch)
			}
			p = p[n:]
			prevT += dt
			count, n := binary.Uvarint(p)
			// Every id takes at least one byte: a count beyond what is left is corrupt,
			// and is refused before it sizes an allocation.
			if n <= 0 || count > uint64(len(p)-n) {
				return ids, fmt.Errorf("%w: bad id count", errBadBatch)
			}
			p = p[n:]
			ids = ids[:0]
			var prev int64
			for range count {
				d, n := binary.Varint(p)
				if n <= 0 {
					return ids, fmt.Errorf("%w: bad object id", errBadBatch)
				}
				p = p[n:]
				prev += d
				ids = append(ids, prev)
			}
			fn(id, prevT, ids)
		}
		return ids, nil
	default:
		return ids, fmt.Errorf("%w: unknown version %d", errBadBatch, version)
	}
}
