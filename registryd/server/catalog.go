package server

import (
	"context"
	"slices"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// catalogPage returns up to n repositories after last, and whether more
// follow: from the tag store when it keeps a catalog (found by type
// assertion; it holds every name in memory), else from the bucket layout,
// listing only what the page needs.
func (s *server) catalogPage(ctx context.Context, last string, n int) ([]string, bool, error) {
	if c, ok := s.tags.(tags.Catalog); ok {
		all, err := c.Repositories(ctx)
		if err != nil {
			return nil, false, err
		}
		i, _ := slices.BinarySearch(all, last)
		if i < len(all) && all[i] == last {
			i++
		}
		page := all[i:]
		if len(page) > n {
			return append([]string{}, page[:n]...), true, nil
		}
		return append([]string{}, page...), false, nil
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
