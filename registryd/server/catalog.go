package server

import (
	"context"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// catalogPage returns up to n repositories after last, and whether more
// follow: from the tag store when it keeps a catalog (found by type
// assertion; it keeps every name in memory, sorted), else from the bucket layout,
// listing only what the page needs.
func (s *server) catalogPage(ctx context.Context, last string, n int) ([]string, bool, error) {
	if c, ok := s.tags.(tags.Catalog); ok {
		return c.RepositoriesPage(ctx, last, n)
	}
	page, err := s.store.RepositoriesPage(ctx, last, n+1)
	if err != nil {
		return nil, false, err
	}
	if page == nil {
		page = []string{}
	}
	if len(page) > n {
		return page[:n], true, nil
	}
	return page, false, nil
}
