package storage

import (
	"context"
	"errors"
	"io"
	"strings"

	"gocloud.dev/blob"
)

// RepositoryExists reports whether repository name itself holds anything:
// a layer, manifest, referrer or tag, not merely a repository nested under
// it (repos/org/ holds repos/org/app/). One listing of at most two entries
// under "repos/<name>/_", the children only a repository has: repository
// path components cannot start with "_", so nested repositories never
// match, and the delimiter keeps the listing from descending into them.
func (s *Store) RepositoryExists(ctx context.Context, name string) (bool, error) {
	prefix := RepoPrefix(name) + "_"
	objs, _, err := s.bucket.ListPage(ctx, blob.FirstPageToken, 2, &blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	if err != nil && !errors.Is(err, io.EOF) {
		return false, classify(err, prefix)
	}
	for _, o := range objs {
		// A tombstone alone marks a repository that was deleted.
		if o.Key != TombstoneKey(name) {
			return true, nil
		}
	}
	return false, nil
}

// Repositories returns every repository name in lexical order. A directory
// under repos/ is a repository when it holds one of the "_" children;
// repository path components cannot start with "_", so there is no clash.
func (s *Store) Repositories(ctx context.Context) ([]string, error) {
	var out []string
	err := s.walkRepositories(ctx, reposPrefix, &out)
	return out, err
}

func (s *Store) walkRepositories(ctx context.Context, prefix string, out *[]string) error {
	children, err := s.listNames(ctx, prefix, true)
	if err != nil {
		return err
	}
	isRepo := false
	for _, c := range children {
		if strings.HasPrefix(c, "_") {
			isRepo = true
		}
	}
	if isRepo {
		*out = append(*out, strings.TrimSuffix(strings.TrimPrefix(prefix, reposPrefix), "/"))
	}
	for _, c := range children {
		if strings.HasPrefix(c, "_") {
			continue
		}
		if err := s.walkRepositories(ctx, prefix+c+"/", out); err != nil {
			return err
		}
	}
	return nil
}
