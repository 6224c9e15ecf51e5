// Package tags defines where a registry keeps tag -> manifest mappings.
// Implementations: Bucket here (the tag journal in the bucket, used
// standalone), and a Kubernetes one (Repository status) elsewhere; both
// pass tagstoretest.Run.
package tags

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotFound: the repository has no such tag.
var ErrNotFound = errors.New("tag not found")

// Store maps the tags of repositories to manifest descriptors. Callers pass
// names and tags already validated by package reference.
type Store interface {
	// Get returns the descriptor tag points to, or ErrNotFound.
	Get(ctx context.Context, repo, tag string) (ocispec.Descriptor, error)
	// Put points tag at desc, replacing any previous target.
	Put(ctx context.Context, repo, tag string, desc ocispec.Descriptor) error
	// Delete removes tag, or returns ErrNotFound.
	Delete(ctx context.Context, repo, tag string) error
	// List returns at most n (n <= 0: all) tags of repo sorted lexically,
	// starting after last ("" from the start). A repository without tags
	// yields an empty list, not an error.
	List(ctx context.Context, repo string, n int, last string) ([]string, error)
}

// UntagAll deletes every tag of repo that s resolves to d, one Get and
// Delete each, and returns the tags it deleted; a tag that goes meanwhile
// is skipped. It is as current as s's own reads, so it serves stores that
// read without a cache (the bucket) and those without DigestUntagger.
func UntagAll(ctx context.Context, s Store, repo string, d digest.Digest) ([]string, error) {
	all, err := s.List(ctx, repo, 0, "")
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, t := range all {
		desc, err := s.Get(ctx, repo, t)
		if err == nil {
			if desc.Digest != d {
				continue
			}
			err = s.Delete(ctx, repo, t)
		}
		switch {
		case err == nil:
			removed = append(removed, t)
		case !errors.Is(err, ErrNotFound):
			return removed, err
		}
	}
	return removed, nil
}
