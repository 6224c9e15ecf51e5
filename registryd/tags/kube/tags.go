package kube

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// Get answers from the cache; a miss costs one live read, so a tag pushed
// through another replica a moment ago still resolves.
func (s *Store) Get(ctx context.Context, path, tag string) (ocispec.Descriptor, error) {
	repo, err := s.cached(ctx, path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if repo != nil {
		if t, ok := repo.Status.FindTag(tag); ok {
			return descriptor(t), nil
		}
	}
	if repo, err = s.live(ctx, path, repo); err != nil || repo == nil {
		return ocispec.Descriptor{}, errors.Join(err, tags.ErrNotFound)
	}
	if t, ok := repo.Status.FindTag(tag); ok {
		return descriptor(t), nil
	}
	return ocispec.Descriptor{}, tags.ErrNotFound
}

// List pages through the tags of path, sorted, from the cache.
func (s *Store) List(ctx context.Context, path string, n int, last string) ([]string, error) {
	repo, err := s.cached(ctx, path)
	if err != nil {
		return nil, err
	}
	if repo == nil {
		if repo, err = s.live(ctx, path, nil); err != nil || repo == nil {
			return []string{}, err
		}
	}
	out := []string{}
	for _, t := range repo.Status.Tags {
		if t.Name <= last {
			continue
		}
		if n > 0 && len(out) == n {
			break
		}
		out = append(out, t.Name)
	}
	return out, nil
}

// Put checks the Registry's rules, writes the journal, then the status.
func (s *Store) Put(ctx context.Context, path, tag string, desc ocispec.Descriptor) error {
	entry := v1.TagStatus{Name: tag, Digest: desc.Digest.String(), MediaType: desc.MediaType, Size: desc.Size, PushedAt: metav1.Now()}
	repo, err := s.commit(ctx, path, &change{create: true, apply: func(ctx context.Context, repo *v1.Repository, reg *v1.Registry) (bool, error) {
		old, exists := repo.Status.FindTag(tag)
		if exists && old.Digest == entry.Digest {
			return false, nil
		}
		if exists && repo.Spec.ImmutableTags {
			return false, errcode.Denied.With(fmt.Sprintf("tag %s of repository %s is immutable (Repository %s has immutableTags: true) and points at %s",
				tag, path, repo.Name, old.Digest))
		}
		if limit := reg.Spec.Limits.MaxTagsPerRepository; !exists && limit > 0 && int32(len(repo.Status.Tags)) >= limit {
			return false, errcode.Denied.With(fmt.Sprintf("repository %s holds %d tags, the limit of Registry %s (spec.limits.maxTagsPerRepository): delete tags or raise the limit",
				path, len(repo.Status.Tags), reg.Name))
		}
		// The journal first: a tag in status is always in the bucket too.
		if err := s.opts.Journal.Put(ctx, path, tag, desc); err != nil {
			return false, unavailable(fmt.Errorf("writing the tag journal: %w", err))
		}
		repo.Status.SetTag(entry)
		return true, nil
	}})
	if err == nil {
		s.event(repo, "TagPushed", "Push", "tag %s now points at %s", tag, desc.Digest)
	}
	return err
}

// EnsureRepository creates the Repository of path unless it exists (a push
// by digest); through the group commit, so it costs nothing when cached.
func (s *Store) EnsureRepository(ctx context.Context, path string) error {
	_, err := s.commit(ctx, path, &change{create: true, apply: func(context.Context, *v1.Repository, *v1.Registry) (bool, error) {
		return false, nil
	}})
	return err
}

// Delete removes a tag from the status, then from the journal.
func (s *Store) Delete(ctx context.Context, path, tag string) error {
	repo, err := s.commit(ctx, path, &change{apply: func(_ context.Context, repo *v1.Repository, _ *v1.Registry) (bool, error) {
		if !repo.Status.RemoveTag(tag) {
			return false, tags.ErrNotFound
		}
		return true, nil
	}})
	if err != nil {
		return err
	}
	if err := s.opts.Journal.Delete(ctx, path, tag); err != nil && !errors.Is(err, tags.ErrNotFound) {
		return unavailable(fmt.Errorf("deleting from the tag journal: %w", err))
	}
	s.event(repo, "TagDeleted", "Delete", "tag %s deleted", tag)
	return nil
}

// createRepository makes the Repository on first push. Replicas racing to
// create it compute the same name; the loser reads the winner's object.
func (s *Store) createRepository(ctx context.Context, reg *v1.Registry, path string) (*v1.Repository, error) {
	if !ptr.Deref(reg.Spec.AutoCreateRepositories, true) {
		return nil, errcode.NameUnknown.With(fmt.Sprintf(
			"repository %s does not exist and Registry %s does not create repositories on push (spec.autoCreateRepositories: false): create a Repository for it", path, reg.Name))
	}
	repo := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{
			Name:      v1.RepositoryObjectName(reg.Name, path),
			Namespace: reg.Namespace,
			Labels:    map[string]string{v1.LabelRegistry: reg.Name},
			// Set now, not by the operator later: a deletion right after
			// creation must still go through the deletion policy.
			Finalizers: []string{v1.RepositoryFinalizer},
		},
		Spec: v1.RepositorySpec{Registry: reg.Name, Name: path},
	}
	err := s.client.Create(ctx, repo)
	if apierrors.IsAlreadyExists(err) {
		if err := s.client.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
			return nil, unavailable(err)
		}
		return repo, nil
	}
	if err != nil {
		return nil, unavailable(fmt.Errorf("creating Repository %s: %w", repo.Name, err))
	}
	if ts, ok := s.opts.Journal.(tags.Tombstones); ok {
		// Pushed to again after a deliberate deletion: importable once more.
		if err := ts.ClearDeleted(ctx, path); err != nil {
			s.opts.Logger.Warn("clearing the deleted mark", "repository", path, "error", err)
		}
	}
	s.event(repo, "RepositoryCreated", "Push", "created on first push to %s", path)
	return repo, nil
}

func (s *Store) event(repo *v1.Repository, reason, action, note string, args ...any) {
	if s.opts.Events != nil && repo != nil {
		s.opts.Events.Eventf(repo, nil, corev1.EventTypeNormal, reason, action, note, args...)
	}
}

func descriptor(t v1.TagStatus) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: t.MediaType, Digest: digest.Digest(t.Digest), Size: t.Size}
}

// isStoreError tells errors meant for the client (spec codes, not found)
// from API server trouble.
func isStoreError(err error) bool {
	var e *errcode.Error
	return errors.As(err, &e) || errors.Is(err, tags.ErrNotFound)
}

// unavailable marks API-server trouble as a 503 the client may retry.
func unavailable(err error) error {
	if err == nil || isStoreError(err) {
		return err
	}
	return &errcode.Error{Code: errcode.Unavailable, RetryAfter: 1, Err: err}
}

func notFoundRegistry(o Options) error {
	return errcode.NameUnknown.With(fmt.Sprintf("Registry %s/%s no longer exists", o.Namespace, o.Registry))
}
