package storage

import (
	"context"
	"errors"
	"io"
	"strings"

	"gocloud.dev/blob"
)

// RepositoryExists reports whether anything is stored for repository name.
func (s *Store) RepositoryExists(ctx context.Context, name string) (bool, error) {
	objs, _, err := s.bucket.ListPage(ctx, blob.FirstPageToken, 1, &blob.ListOptions{Prefix: RepoPrefix(name)})
	if err != nil && !errors.Is(err, io.EOF) {
		return false, classify(err, RepoPrefix(name))
	}
	return len(objs) > 0, nil
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
