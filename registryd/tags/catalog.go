package tags

import "context"

// Catalog is an optional capability of a Store that knows every repository
// itself (the kubernetes store: one Repository object each), so GET
// /v2/_catalog needs no bucket walk. Repositories are sorted.
type Catalog interface {
	Repositories(ctx context.Context) ([]string, error)
}
