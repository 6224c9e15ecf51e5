package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

func storageLocation(reg *v1.Registry) string {
	return reg.Spec.Storage.URL + "#" + reg.Spec.Storage.Prefix
}

// importTimeout bounds one journal import: a bucket that hangs or holds
// very many repositories must not hold a reconcile worker forever. A timed
// out import is retried (with backoff) from the start; repositories already
// created are skipped.
const importTimeout = 2 * time.Minute

// reconcileJournalImport gives a Registry back the repositories its bucket
// holds: one Repository object, with the tags of its journal, for every
// repository the bucket knows of that no object claims and nobody deleted on
// purpose (a Retain deletion leaves a tombstone). It runs once per Registry
// and storage location, recorded in status.storage.journalImportedFrom: for
// a new Registry (a cluster rebuilt over a surviving bucket) or a new
// bucket, not after every operator restart.
func (r *RegistryReconciler) reconcileJournalImport(ctx context.Context, s *registryScope) error {
	loc := storageLocation(s.reg)
	if (s.status.Storage != nil && s.status.Storage.JournalImportedFrom == loc) || !isConditionTrue(s.status.Conditions, v1.ConditionStorageReady) {
		return nil
	}
	if r.storageOutOfReach(s.reg) || usesPodIdentity(s.reg) {
		// A pod's volume, or a bucket only registryd's identity reaches:
		// out of the operator's reach.
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	env, err := r.credentials.read(ctx, r.APIReader, s.reg)
	if err != nil {
		return err
	}
	b, err := r.openStorage(ctx, s.reg, env)
	if err != nil {
		return err
	}
	defer b.Close()
	paths, err := storage.New(b).Repositories(ctx)
	if err != nil {
		return fmt.Errorf("listing the bucket's repositories: %w", err)
	}
	journal := tags.NewBucket(b)
	repos, tagCount := 0, 0
	for _, path := range paths {
		if deleted, err := journal.IsDeleted(ctx, path); err != nil || deleted {
			if err != nil {
				return err
			}
			continue
		}
		n, created, err := r.importRepository(ctx, s.reg, journal, path)
		if err != nil {
			return err
		}
		if created {
			repos++
			tagCount += n
		}
	}
	if repos > 0 {
		r.Recorder.Eventf(s.reg, nil, corev1.EventTypeNormal, "JournalImported", "Import",
			"restored %d repositories with %d tags from the bucket's tag journal", repos, tagCount)
	}
	if s.status.Storage == nil {
		s.status.Storage = &v1.StorageStatus{}
	}
	s.status.Storage.JournalImportedFrom = loc
	return nil
}

// importRepository creates the Repository of path with the journal's tags,
// unless some Repository already claims path.
func (r *RegistryReconciler) importRepository(ctx context.Context, reg *v1.Registry, journal tags.Store, path string) (int, bool, error) {
	var claims v1.RepositoryList
	if err := r.List(ctx, &claims, client.InNamespace(reg.Namespace),
		client.MatchingFields{indexRepositoryPath: reg.Name + "/" + path}); err != nil {
		return 0, false, err
	}
	if len(claims.Items) > 0 {
		return 0, false, nil
	}
	names, err := journal.List(ctx, path, 0, "")
	if err != nil {
		return 0, false, fmt.Errorf("reading the tag journal of %s: %w", path, err)
	}
	status := v1.RepositoryStatus{}
	now := metav1.Now()
	for _, name := range names {
		d, err := journal.Get(ctx, path, name)
		if err != nil {
			return 0, false, fmt.Errorf("reading journal tag %s:%s: %w", path, name, err)
		}
		status.SetTag(v1.TagStatus{Name: name, Digest: d.Digest.String(), MediaType: d.MediaType, Size: d.Size, PushedAt: now})
	}
	repo := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{
			Name: v1.RepositoryObjectName(reg.Name, path), Namespace: reg.Namespace,
			Labels:          map[string]string{labelRegistry: reg.Name},
			OwnerReferences: []metav1.OwnerReference{v1.RegistryOwnerReference(reg)},
		},
		Spec: v1.RepositorySpec{Registry: reg.Name, Name: path},
	}
	if err := r.Create(ctx, repo); err != nil {
		if apierrors.IsAlreadyExists(err) { // registryd got there first
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("creating Repository for %s: %w", path, err)
	}
	// Past one object, the tags go into TagShards as registryd would
	// have split them, all created before the status that points at them.
	shards, rootTags, split := v1.LayOutTags(repo, status.Tags, v1.MaxTagsPerObject)
	for _, sh := range shards {
		if err := r.Create(ctx, sh); err != nil && !apierrors.IsAlreadyExists(err) {
			return 0, false, fmt.Errorf("restoring the tags of %s: %w", path, err)
		}
	}
	count, bytes := int32(len(status.Tags)), status.CountBytes()
	// The Repository reconciler may update it meanwhile: retry on conflict.
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		// Live: the cache may not have the object just created.
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
			return err
		}
		repo.Status.Tags, repo.Status.TagsSplit = rootTags, split
		repo.Status.TagCount, repo.Status.Bytes = count, bytes
		return r.Status().Update(ctx, repo)
	})
	if err != nil {
		return 0, false, fmt.Errorf("restoring the tags of %s: %w", path, err)
	}
	return len(names), true, nil
}
