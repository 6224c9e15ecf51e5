package controllers

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// reconcileUsage keeps status.usage of a Repository whose tags are split
// while it has bounds (v1.Repository.KeepsUsage; registryd reserves and
// settles on it: registryd/tags/kube/usage.go), recounting it from the
// TagShards every usage recount interval, and removes it when the bounds
// go. It runs after the status patch: its update is conditional on a live
// read, not on the cached copy the phases used. It returns when to run
// again (0: not needed).
func (r *RepositoryReconciler) reconcileUsage(ctx context.Context, repo *v1.Repository, reg *v1.Registry) (time.Duration, error) {
	keeps, u := repo.KeepsUsage(reg), repo.Status.Usage
	switch {
	case !keeps && u == nil:
		return 0, nil
	case keeps && u != nil && u.CountedAt != nil:
		if wait := r.usageRecountInterval() - time.Since(u.CountedAt.Time); wait > 0 {
			return wait, nil
		}
	}
	if err := r.recountUsage(ctx, client.ObjectKeyFromObject(repo), reg); err != nil {
		return 0, err
	}
	if keeps {
		return r.usageRecountInterval(), nil
	}
	return 0, nil
}

// recountUsage sets status.usage to the sum of the Repository's TagShards,
// with the argument of the Registry's recount (registry_usage.go): the
// Repository is read live, then its shards are listed live, and the update
// is conditional on that read, so every write that settled before it is in
// the sum and a reservation made after it makes the update conflict.
func (r *RepositoryReconciler) recountUsage(ctx context.Context, key client.ObjectKey, reg *v1.Registry) error {
	return updateUsageLive(ctx, r.Client, r.APIReader, key, func() *v1.Repository { return &v1.Repository{} }, func(repo *v1.Repository) (bool, error) {
		if !repo.KeepsUsage(reg) {
			write := repo.Status.Usage != nil
			repo.Status.Usage = nil
			return write, nil
		}
		tree, err := tagTree(ctx, r.APIReader, repo)
		if err != nil {
			return false, err
		}
		tags, bytes := tree.Totals()
		repo.Status.Usage = repo.Status.Usage.Recounted(bytes, int64(tags), metav1.Now())
		return true, nil
	})
}
