package store

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
)

func TestDecodeBatch_namesTheInboxInItsErrors(t *testing.T) {
	t.Parallel()
	_, err := decodeBatch([]byte{9}, nil, func(uuid.UUID, int64, []int64) {})
	require.ErrorIs(t, err, callback.ErrMalformed)
	require.EqualError(t, err, "malformed inbox batch: unknown version 9")
}
