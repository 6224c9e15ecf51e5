package controllers

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// tagTree reads the tags of repo through reader: its status, or, once they
// are split, its TagShards (v1.TagTree).
func tagTree(ctx context.Context, reader client.Reader, repo *v1.Repository) (v1.TagTree, error) {
	tree := v1.NewTagTree(repo, nil)
	if !repo.Status.TagsSplit {
		return tree, nil
	}
	var list v1.TagShardList
	if err := reader.List(ctx, &list, client.InNamespace(repo.Namespace),
		client.MatchingLabels{v1.LabelRepositoryUID: string(repo.UID)}); err != nil {
		return tree, fmt.Errorf("listing the tag shards of %s: %w", repo.Name, err)
	}
	return v1.NewTagTree(repo, list.Items), nil
}
