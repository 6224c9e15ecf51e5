package server

import (
	"context"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// repositories lists every repository for _catalog: from the tag store when
// it keeps a catalog (found by type assertion), else from the bucket layout.
func (s *server) repositories(ctx context.Context) ([]string, error) {
	if c, ok := s.tags.(tags.Catalog); ok {
		return c.Repositories(ctx)
	}
	return s.store.Repositories(ctx)
}
