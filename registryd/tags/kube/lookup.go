package kube

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"k8s.io/utils/ptr"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// cached returns the Repository that owns path, from the cache or from this
// replica's own last write when the cache has not caught up with it yet
// (read-your-writes); nil if none. The object is shared with the cache:
// read it, never change it (forWrite copies).
func (s *Store) cached(ctx context.Context, path string) (*v1.Repository, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	var list v1.RepositoryList
	// No copy: a repository at the tag limit is ~1 MB, and reads are the pull path.
	if err := s.cache.List(ctx, &list, client.InNamespace(s.opts.Namespace), client.MatchingFields{indexPath: path},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, unavailable(fmt.Errorf("listing cached repositories: %w", err))
	}
	repo := v1.OldestRepository(list.Items)
	if own := s.ownWrite(path, repo); own != nil {
		return own, nil
	}
	return repo, nil
}

// ownWriteTTL bounds how long this replica's own write can stand in for a
// cache that has not seen it (the watch normally catches up in milliseconds).
const ownWriteTTL = 10 * time.Second

type ownWrite struct {
	repo *v1.Repository
	at   time.Time
}

// remember keeps the object this replica just wrote.
func (s *Store) remember(path string, repo *v1.Repository) {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	if s.own == nil {
		s.own = map[string]ownWrite{}
	}
	s.own[path] = ownWrite{repo: repo, at: time.Now()} // the caller hands it over
}

// ownWrite returns this replica's last write of path if it is newer than
// the cached object; it forgets it once the cache has caught up.
func (s *Store) ownWrite(path string, cached *v1.Repository) *v1.Repository {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	w, ok := s.own[path]
	if !ok {
		return nil
	}
	if time.Since(w.at) > ownWriteTTL || (cached != nil && cached.UID == w.repo.UID && !newer(w.repo, cached)) {
		delete(s.own, path)
		return nil
	}
	if cached != nil && cached.UID != w.repo.UID {
		return nil
	}
	return w.repo
}

// newer reports whether a's resourceVersion is after b's.
func newer(a, b client.Object) bool {
	c, err := resourceversion.CompareResourceVersion(a.GetResourceVersion(), b.GetResourceVersion())
	return err == nil && c > 0
}

// live reads the Repository for path from the API server: the one the cache
// knows of, else the object registryd would have created; nil if none. An
// object counts only if it is this Registry's, for path, and not being
// deleted: the derived name is a convention anyone can squat.
func (s *Store) live(ctx context.Context, path string, known *v1.Repository) (*v1.Repository, error) {
	s.liveReads.Inc()
	derived := v1.RepositoryObjectName(s.opts.Registry, path)
	if known != nil && known.Name != derived {
		repo, err := s.get(ctx, known.Name, path)
		if repo != nil || err != nil {
			return repo, err
		}
	}
	return s.get(ctx, derived, path)
}

// get reads the object called name live; nil if it is missing or is not the
// Repository of path (see owns).
func (s *Store) get(ctx context.Context, name, path string) (*v1.Repository, error) {
	repo := &v1.Repository{}
	err := s.client.Get(ctx, client.ObjectKey{Namespace: s.opts.Namespace, Name: name}, repo)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, unavailable(fmt.Errorf("reading Repository %s: %w", name, err))
	case !s.owns(repo, path):
		return nil, nil
	}
	return repo, nil
}

// owns reports whether repo is the live Repository of path in this Registry.
func (s *Store) owns(repo *v1.Repository, path string) bool {
	return repo.Spec.Registry == s.opts.Registry && repo.Spec.Name == path && repo.DeletionTimestamp.IsZero()
}

// registry is this store's Registry, from the cache; nil if it is gone.
func (s *Store) registry(ctx context.Context) (*v1.Registry, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	reg := &v1.Registry{}
	err := s.cache.Get(ctx, client.ObjectKey{Namespace: s.opts.Namespace, Name: s.opts.Registry}, reg)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return reg, err
}

// liveRegistry reads this store's Registry from the API server; nil if it is gone.
func (s *Store) liveRegistry(ctx context.Context) (*v1.Registry, error) {
	reg := &v1.Registry{}
	err := s.client.Get(ctx, client.ObjectKey{Namespace: s.opts.Namespace, Name: s.opts.Registry}, reg)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, unavailable(fmt.Errorf("reading Registry %s: %w", s.opts.Registry, err))
	}
	return reg, nil
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// RepositoryExists reports whether path has a Repository: from the cache,
// with a live read on a miss, so one created a moment ago through another
// replica or kubectl counts.
func (s *Store) RepositoryExists(ctx context.Context, path string) (bool, error) {
	repo, err := s.cached(ctx, path)
	if err != nil || repo != nil {
		return repo != nil, err
	}
	repo, err = s.live(ctx, path, nil)
	return repo != nil, err
}

// createsOnPush reports whether reg creates a repository's Repository on its
// first push (spec.autoCreateRepositories, on unless set false).
func createsOnPush(reg *v1.Registry) bool {
	return ptr.Deref(reg.Spec.AutoCreateRepositories, true)
}

// CheckPush lets a push go on when the Registry creates repositories on
// push (no API request: a blob upload needs no API server then) or when
// path's Repository exists; with auto-creation off it refuses the push of
// a repository that has none, before anything is stored. When the cache
// cannot answer yet, the tag write decides.
func (s *Store) CheckPush(ctx context.Context, path string) error {
	reg, err := s.registry(ctx)
	if err != nil || reg == nil || createsOnPush(reg) {
		return nil
	}
	ok, err := s.RepositoryExists(ctx, path)
	if err != nil {
		return unavailable(err)
	}
	if !ok {
		return errcode.NameUnknown.With(fmt.Sprintf(
			"repository %s does not exist and Registry %s does not create repositories on push (spec.autoCreateRepositories: false): create a Repository for it", path, reg.Name))
	}
	return nil
}
