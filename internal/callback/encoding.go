package callback

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// The binary encoding of a list of callbacks, the one the service writes wherever it
// keeps callbacks: an inbox batch (inbox_batches.data, one group commit's callbacks)
// and a spool record (after its batch id). Postgres never looks inside; the merger and
// spool replay decode it in Go. Data is not self-delimiting: it ends where the bytea or
// the checksummed record that holds it ends.
//
// Version 1, the one AppendEncoded writes:
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
// The cost of keeping callbacks is the bytes written, to the WAL or fsynced to the
// spool, so the encoding is compact. The handler sends ids sorted and distinct, so the
// differences are small and positive: a callback of 200 ids from 0..99 takes about 130
// bytes instead of 1,600 as bigint[]. Any order still round-trips (differences may be
// negative; the arithmetic wraps both ways). Receipt times keep what timestamptz
// keeps, so nothing is lost on the way to the objects table.
//
// Version 0 is only read. It is written by the migration that introduced inbox
// batches, for callbacks accepted before it: exactly one callback, with fixed-width
// big-endian fields (what SQL can build):
//
//	version      1 byte: 0
//	callback id  16 bytes
//	received_at  8 bytes: Unix microseconds
//	object ids   8 bytes each, to the end of the data
const encodingVersion = 1

// ErrMalformed is data that does not decode: every error of DecodeEach and Decode is
// one (errors.Is). Their text says only what is wrong, for the caller to say in what:
// "malformed inbox batch: bad id count".
var ErrMalformed = errors.New("malformed encoded callbacks")

type malformedError string

func (e malformedError) Error() string      { return string(e) }
func (malformedError) Is(target error) bool { return target == ErrMalformed }

func malformed(format string, args ...any) error {
	return malformedError(fmt.Sprintf(format, args...))
}

// AppendEncoded appends the encoding of cbs to dst, in version 1 of the format that
// encodingVersion documents.
func AppendEncoded(dst []byte, cbs []Callback) []byte {
	dst = append(dst, encodingVersion)
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

// DecodeEach calls fn for each callback in data, in order, with its receipt time in
// Unix microseconds and its ids. ids is scratch space that is reused and returned, so
// fn must not keep the slice it is given. fn has seen the callbacks before an error.
func DecodeEach(data []byte, ids []int64, fn func(id uuid.UUID, receivedAt int64, ids []int64)) ([]int64, error) {
	if len(data) == 0 {
		return ids, malformed("no data")
	}
	version, p := data[0], data[1:]
	switch version {
	case 0:
		if len(p) < 24 || (len(p)-24)%8 != 0 {
			return ids, malformed("version 0 of %d bytes", len(data))
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
				return ids, malformed("truncated callback id")
			}
			id := uuid.UUID(p[:16])
			p = p[16:]
			dt, n := binary.Varint(p)
			if n <= 0 {
				return ids, malformed("bad receipt time")
			}
			p = p[n:]
			prevT += dt
			count, n := binary.Uvarint(p)
			// Every id takes at least one byte: a count beyond what is left is corrupt,
			// and is refused before it sizes an allocation.
			if n <= 0 || count > uint64(len(p)-n) {
				return ids, malformed("bad id count")
			}
			p = p[n:]
			ids = ids[:0]
			var prev int64
			for range count {
				d, n := binary.Varint(p)
				if n <= 0 {
					return ids, malformed("bad object id")
				}
				p = p[n:]
				prev += d
				ids = append(ids, prev)
			}
			fn(id, prevT, ids)
		}
		return ids, nil
	default:
		return ids, malformed("unknown version %d", version)
	}
}

// Decode returns the callbacks in data, each with ids of its own. ReceivedAt is in
// UTC, and ObjectIDs is never nil, so that an empty list stays an empty array, not a
// NULL.
func Decode(data []byte) ([]Callback, error) {
	var cbs []Callback
	_, err := DecodeEach(data, nil, func(id uuid.UUID, receivedAt int64, ids []int64) {
		own := make([]int64, len(ids))
		copy(own, ids)
		cbs = append(cbs, Callback{ID: id, ReceivedAt: time.UnixMicro(receivedAt).UTC(), ObjectIDs: own})
	})
	if err != nil {
		return nil, err
	}
	return cbs, nil
}
