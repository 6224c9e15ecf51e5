package tags

import "context"

// Catalog is an optional capability of a Store that knows every repository
// itself (the kubernetes store: one Repository object each), so GET
// /v2/_catalog needs no bucket walk. Repositories are sorted.
type Catalog interface {
	Repositories(ctx context.Context) ([]string, error)
}

// RepositoryCreator is an optional capability of a Store that keeps an
// object per repository: a push by digest (no tag) creates it as a tag push
// does, so the repository is in the catalog and under its deletion policy.
type RepositoryCreator interface {
	EnsureRepository(ctx context.Context, repo string) error
}
