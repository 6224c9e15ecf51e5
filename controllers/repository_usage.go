package controllers

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	var err error
	for range 5 {
		repo := &v1.Repository{}
		if err = r.APIReader.Get(ctx, key, repo); err != nil {
			return client.IgnoreNotFound(err)
		}
		if !repo.KeepsUsage(reg) {
			if repo.Status.Usage == nil {
				return nil
			}
			repo.Status.Usage = nil
		} else {
			tree, err := tagTree(ctx, r.APIReader, repo)
			if err != nil {
				return err
			}
			tags, bytes := tree.Totals()
			repo.Status.Usage = repo.Status.Usage.Recounted(bytes, int64(tags), metav1.Now())
		}
		err = r.Status().Update(ctx, repo)
		if !apierrors.IsConflict(err) {
			return client.IgnoreNotFound(err)
		}
	}
	return fmt.Errorf("recounting usage: %w", err)
}
