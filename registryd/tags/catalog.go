package tags

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// Catalog is an optional capability of a Store that knows every repository
// itself (the kubernetes store: one Repository object each), so GET
// /v2/_catalog needs no bucket walk. A page is up to n repositories after
// last (n < 0: all), sorted, and whether more follow; its cost is the
// page's, not the catalog's.
type Catalog interface {
	RepositoriesPage(ctx context.Context, last string, n int) (page []string, more bool, err error)
}

// RepositoryCreator is an optional capability of a Store that keeps an
// object per repository: a push by digest (no tag) creates it as a tag push
// does, so the repository is in the catalog and under its deletion policy.
type RepositoryCreator interface {
	EnsureRepository(ctx context.Context, repo string) error
}

// DigestUntagger is an optional capability of a Store: it removes every tag
// of repo that points at d, deciding on the store's authoritative state (a
// live read and a compare-and-swap, never a cache's word), and returns the
// tags it removed. A manifest DELETE by digest uses it, so a tag pushed
// while the delete runs is either removed or re-validated, never left
// pointing at a manifest that is gone.
type DigestUntagger interface {
	UntagDigest(ctx context.Context, repo string, d digest.Digest) ([]string, error)
}

// PushChecker is an optional capability of a Store that keeps an object
// per repository and may refuse to create one (autoCreateRepositories:
// false). Uploads and manifest pushes ask it first, so nothing is stored
// for a push that will be refused. It answers nil when the push may go on
// (the repository exists, or will be created by the push), a NAME_UNKNOWN
// error when it may not; a store that cannot tell at the moment answers
// nil and leaves the decision to the tag write.
type PushChecker interface {
	CheckPush(ctx context.Context, repo string) error
}
