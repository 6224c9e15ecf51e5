package tags

import (
	"context"
	"fmt"

	"gocloud.dev/gcerrors"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Tombstones is an optional capability of a journal: it remembers which
// repositories were deleted on purpose, so importing the journal after a
// lost cluster brings back only what was lost.
type Tombstones interface {
	MarkDeleted(ctx context.Context, repo string) error
	ClearDeleted(ctx context.Context, repo string) error
	IsDeleted(ctx context.Context, repo string) (bool, error)
}

var _ Tombstones = (*Bucket)(nil)

func (s *Bucket) MarkDeleted(ctx context.Context, repo string) error {
	if err := storage.WriteSmall(ctx, s.bucket, storage.TombstoneKey(repo), []byte("deleted\n"), nil); err != nil {
		return fmt.Errorf("marking %s deleted: %w", repo, err)
	}
	return nil
}

func (s *Bucket) ClearDeleted(ctx context.Context, repo string) error {
	err := s.bucket.Delete(ctx, storage.TombstoneKey(repo))
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("clearing the deleted mark of %s: %w", repo, storage.Classify(err, storage.TombstoneKey(repo)))
	}
	return nil
}

func (s *Bucket) IsDeleted(ctx context.Context, repo string) (bool, error) {
	ok, err := s.bucket.Exists(ctx, storage.TombstoneKey(repo))
	if err != nil {
		return false, fmt.Errorf("reading the deleted mark of %s: %w", repo, storage.Classify(err, storage.TombstoneKey(repo)))
	}
	return ok, nil
}
