package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// Get answers from the cache. A miss asks the journal first: a push is
// acknowledged only once its tag is in the journal (mirror), so a tag
// another replica acknowledged a moment ago, before this replica's cache
// had it, is there, and a journal miss is a miss with no API request (the
// HEAD a client sends before pushing a new tag). A journal hit is
// confirmed by one live read: the journal also outlives a Retain
// Repository that was deleted. A journal that cannot answer leaves the
// live read to decide, as before.
func (s *Store) Get(ctx context.Context, path, tag string) (ocispec.Descriptor, error) {
	repo, err := s.cached(ctx, path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if repo != nil {
		if t, ok := s.tree(repo).Find(tag); ok {
			return descriptor(t), nil
		}
	}
	if s.opts.Journal != nil {
		if _, err := s.opts.Journal.Get(ctx, path, tag); errors.Is(err, tags.ErrNotFound) {
			s.journalMisses.Inc()
			return ocispec.Descriptor{}, tags.ErrNotFound
		}
	}
	if repo, err = s.live(ctx, path, repo); err != nil || repo == nil {
		return ocispec.Descriptor{}, errors.Join(err, tags.ErrNotFound)
	}
	tree, l := s.liveTree(ctx, repo)
	t, ok := tree.Find(tag)
	if l.err != nil {
		return ocispec.Descriptor{}, l.err
	}
	if ok {
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
	tree := s.tree(repo)
	var l *liveShards
	if repo == nil {
		if repo, err = s.live(ctx, path, nil); err != nil || repo == nil {
			return []string{}, err
		}
		tree, l = s.liveTree(ctx, repo)
	}
	all := tree.After(last, n)
	if l != nil && l.err != nil {
		return nil, l.err
	}
	out := make([]string, len(all))
	for j, t := range all {
		out[j] = t.Name
	}
	return out, nil
}

// Put checks the Registry's rules and writes the status; the journal
// follows once status has the tag (see mirror).
func (s *Store) Put(ctx context.Context, path, tag string, desc ocispec.Descriptor) error {
	return s.PutContent(ctx, path, tag, desc, 0)
}

var _ tags.ContentPutter = (*Store)(nil)

// PutContent is Put recording the bytes the manifest holds, which the
// Repository's quota bounds.
func (s *Store) PutContent(ctx context.Context, path, tag string, desc ocispec.Descriptor, contentSize int64) error {
	entry := v1.TagStatus{Name: tag, Digest: desc.Digest.String(), MediaType: desc.MediaType, Size: desc.Size, PushedAt: metav1.Now(), ContentSize: contentSize}
	// Room on the Registry's quota first (none: no quota), then, once the
	// repository's tags are split, on its own bounds. Without room the
	// push may still go through if it does not grow usage (full).
	var rooms reservations
	room, err := s.reservePush(ctx, s.registryUsage(), contentSize, false)
	rooms = append(rooms, room)
	if root, _ := s.cached(ctx, path); err == nil && root != nil && root.Status.TagsSplit {
		room, err = s.reservePush(ctx, s.repositoryUsage(path), contentSize, false)
		rooms = append(rooms, room)
	}
	var g growth
	var put *change
	var repo *v1.Repository
	for attempt := 0; err == nil; attempt++ {
		put = s.putChange(path, entry, rooms, &g)
		repo, err = s.commit(ctx, path, put)
		if !errors.Is(err, errNeedsReservation) || attempt > 0 {
			break
		}
		// Split since the cache said otherwise: reserve on a live read.
		rooms[1:].settle(ctx, s, err, nil)
		room, err = s.reservePush(ctx, s.repositoryUsage(path), contentSize, true)
		rooms = append(rooms[:1], room)
	}
	if errors.Is(err, errNeedsReservation) {
		err = unavailable(err)
	}
	rooms.settle(ctx, s, err, g.delta)
	switch {
	case put == nil:
	case err == nil && put.created:
		s.event(repo, reasonRepositoryCreated, "Push", "created on first push to %s: tag %s now points at %s", path, tag, desc.Digest)
	case err == nil:
		s.event(repo, reasonTagPushed, "Push", "tag %s now points at %s", tag, desc.Digest)
	case put.created:
		s.event(repo, reasonRepositoryCreated, "Push", "created on first push to %s", path)
	case errors.Is(err, errOverQuota), errors.Is(err, errNoRoom):
		// Why pushes fail, where `kubectl describe repository` shows it.
		var e *errcode.Error
		if errors.As(err, &e) {
			s.warn(repo, "QuotaExceeded", "Push", "%v", e.Detail)
		}
	}
	return err
}

// errNeedsReservation: a push met a split repository with bounds
// (repositoryBounds) and no reservation on it; the push reserves and goes
// again.
var errNeedsReservation = errors.New("the repository's tags split while the push was on its way: no room reserved on it")

// growth is what a committed round added, for the settles.
type growth struct{ bytes, tags int64 }

func (g *growth) delta() (int64, int64) { return g.bytes, g.tags }

// reservations are the rooms a write reserved (usage.go), settled together.
type reservations []pushRoom

func (rs reservations) settle(ctx context.Context, s *Store, err error, delta func() (int64, int64)) {
	for _, r := range rs {
		s.settleAfter(ctx, r.t, r.w, err, delta)
	}
}

// reserved reports whether a reservation counts usage (so the change must
// count what it adds or frees).
func (rs reservations) reserved() bool {
	return slices.ContainsFunc(rs, func(r pushRoom) bool { return r.w != nil })
}

// onRepository reports whether rs holds a reservation on the repository.
func (rs reservations) onRepository() bool { return len(rs) > 1 && rs[1].w != nil }

// putChange is the change that sets entry within rooms (the Registry's,
// and the split repository's); g gets what its committed round added.
func (s *Store) putChange(path string, entry v1.TagStatus, rooms reservations, g *growth) *change {
	tag := entry.Name
	return &change{create: true, tags: []string{tag}, apply: func(set *tagSet, reg *v1.Registry, rules func() tags.ImmutableRules) (bool, []string, error) {
		*g = growth{} // a round run again decides again
		repo := set.repo
		old, exists := repo.Status.FindTag(tag)
		if exists && old.Digest == entry.Digest {
			// Nothing to change, but the journal is written again: this may
			// be the retry of a push whose journal write failed.
			return false, []string{tag}, nil
		}
		if exists {
			if rule, ok := rules().Match(tag); ok {
				return false, nil, tags.ErrImmutable(tag, rule, digest.Digest(old.Digest), tags.ActionOverwritten)
			}
		}
		// A split repository's bounds are decided by its reservation: the
		// other shards' count here is the cache's word.
		bySplit := set.others != nil && repo.KeepsUsage(reg)
		if bySplit && !rooms.onRepository() {
			return false, nil, errNeedsReservation
		}
		if limit := reg.Spec.Limits.MaxTagsPerRepository; !bySplit && !exists && limit > 0 && set.count() >= limit {
			return false, nil, errcode.Denied.With(fmt.Sprintf("repository %s holds %d tags, the limit of Registry %s (spec.limits.maxTagsPerRepository): delete tags or raise the limit",
				path, set.count(), reg.Name))
		}
		// Usage is counted only where a quota needs it: O(tags) a change.
		counts := rooms.reserved() || repo.Spec.Quota != nil && repo.Spec.Quota.Bytes != nil
		var before, after int64
		if counts {
			before = set.bytes()
		}
		repo.Status.SetTag(entry)
		if counts {
			after = set.bytes()
		}
		var err error
		if !bySplit {
			err = checkQuota(set, path, tag, exists, before, after)
		}
		for _, r := range rooms {
			if err == nil {
				err = r.allows(after > before, !exists) // no room for what this push adds
			}
		}
		if err != nil {
			if exists {
				repo.Status.SetTag(old)
			} else {
				repo.Status.RemoveTag(tag)
			}
			return false, nil, err
		}
		g.bytes = after - before
		if !exists {
			g.tags = 1
		}
		return true, []string{tag}, nil
	}}
}

// reserveDelete marks a delete in flight on the Registry's usage and, once
// the repository's tags are split, on the Repository's, so that what it
// frees is settled on both.
func (s *Store) reserveDelete(ctx context.Context, path string) (reservations, error) {
	var rooms reservations
	t := s.registryUsage()
	w, err := s.reserve(ctx, t, 0, 0, false)
	rooms = append(rooms, pushRoom{t: t, w: w})
	if root, _ := s.cached(ctx, path); err == nil && root != nil && root.Status.TagsSplit {
		t = s.repositoryUsage(path)
		w, err = s.reserve(ctx, t, 0, 0, false)
		rooms = append(rooms, pushRoom{t: t, w: w})
	}
	if err != nil {
		rooms.settle(ctx, s, err, nil)
	}
	return rooms, err
}

// errOverQuota is the cause of a quota's refusal (for the Event; the
// client gets the DENIED detail only).
var errOverQuota = errors.New("over quota")

// checkQuota refuses the tag just set in repo when it takes the
// repository past spec.quota: a new tag past quota.tags, or usage grown
// past quota.bytes (before and after: usage without and with it, counted
// when there is a quota.bytes), for a repository whose tags are not split
// (a split one's is decided by its reservation: usage.go). It is decided
// on the object the status update then writes with its resourceVersion,
// so two replicas cannot both add to a repository that has room for one.
func checkQuota(set *tagSet, path, tag string, existed bool, before, after int64) error {
	repo := set.repo
	q := repo.Spec.Quota
	if q == nil {
		return nil
	}
	if q.Tags != nil && !existed && set.count() > *q.Tags {
		return errcode.Denied.Wrap(errOverQuota, fmt.Sprintf("tag %q would be tag %d of repository %s, over its quota of %d tags (Repository %s spec.quota.tags)",
			tag, set.count(), path, *q.Tags, repo.Name))
	}
	if q.Bytes == nil {
		return nil
	}
	if after > before && after > q.Bytes.Value() {
		return errcode.Denied.Wrap(errOverQuota, fmt.Sprintf("tag %q would take repository %s to %d bytes, over its quota of %s (%d bytes; Repository %s spec.quota.bytes); it holds %d",
			tag, path, after, q.Bytes, q.Bytes.Value(), repo.Name, before))
	}
	return nil
}

// immutableRules are the immutable-tag rules that hold in repo: its
// own and its Registry's.
func (s *Store) immutableRules(repo *v1.Repository, reg *v1.Registry) tags.ImmutableRules {
	own := s.patterns.Rules("Repository "+repo.Name, repo.Spec.ImmutableTags)
	return append(own, s.patterns.Rules("Registry "+reg.Name, reg.Spec.ImmutableTags)...)
}

// EnsureRepository creates the Repository of path unless it exists (a push
// by digest); through the group commit. That it exists is decided live.
func (s *Store) EnsureRepository(ctx context.Context, path string) error {
	ensure := &change{create: true, apply: func(*tagSet, *v1.Registry, func() tags.ImmutableRules) (bool, []string, error) {
		return false, nil, nil
	}}
	repo, err := s.commit(ctx, path, ensure)
	if ensure.created {
		s.event(repo, reasonRepositoryCreated, "Push", "created on first push to %s (by digest)", path)
	}
	return err
}

// Delete removes a tag from the status, then from the journal. An
// immutable tag cannot be deleted: delete and push again would move it.
func (s *Store) Delete(ctx context.Context, path, tag string) error {
	rooms, err := s.reserveDelete(ctx, path)
	if err != nil {
		return err
	}
	counts := rooms.reserved()
	var freedBytes int64
	repo, err := s.commit(ctx, path, &change{tags: []string{tag}, apply: func(set *tagSet, _ *v1.Registry, rules func() tags.ImmutableRules) (bool, []string, error) {
		freedBytes = 0 // a round run again decides again
		repo := set.repo
		old, exists := repo.Status.FindTag(tag)
		if !exists {
			// The journal entry goes too: the retry of a delete whose
			// journal write failed.
			return false, []string{tag}, tags.ErrNotFound
		}
		if rule, ok := rules().Match(tag); ok {
			return false, nil, tags.ErrImmutable(tag, rule, digest.Digest(old.Digest), tags.ActionDeleted)
		}
		if counts {
			freedBytes = set.bytes()
		}
		repo.Status.RemoveTag(tag)
		if counts {
			freedBytes -= set.bytes()
		}
		return true, []string{tag}, nil
	}})
	rooms.settle(ctx, s, err, func() (int64, int64) { return -freedBytes, -1 })
	if err != nil {
		return err
	}
	s.event(repo, reasonTagDeleted, "Delete", "tag %s deleted", tag)
	return nil
}

var _ tags.DigestUntagger = (*Store)(nil)

// UntagDigest removes every tag of path that points at d in one status
// update decided on live state, then from the journal, and returns the
// tags it removed (none when the repository does not exist). When an
// immutable tag points at d it removes none and answers DENIED.
func (s *Store) UntagDigest(ctx context.Context, path string, d digest.Digest) ([]string, error) {
	rooms, err := s.reserveDelete(ctx, path)
	if err != nil {
		return nil, err
	}
	counts := rooms.reserved()
	var freedBytes, freedTags int64
	c := &change{whole: true, apply: func(set *tagSet, _ *v1.Registry, rules func() tags.ImmutableRules) (bool, []string, error) {
		freedBytes, freedTags = 0, 0 // a round run again decides again
		repo := set.repo
		var names []string
		for _, t := range repo.Status.Tags {
			if t.Digest == d.String() {
				names = append(names, t.Name)
			}
		}
		if len(names) == 0 {
			return false, nil, nil
		}
		rs := rules()
		for _, name := range names {
			if rule, ok := rs.Match(name); ok {
				return false, nil, tags.ErrImmutable(name, rule, d, tags.ActionUntagged)
			}
		}
		if counts {
			freedBytes = set.bytes()
		}
		for _, name := range names {
			repo.Status.RemoveTag(name)
		}
		if counts {
			freedBytes -= set.bytes()
		}
		freedTags = int64(len(names))
		return true, names, nil
	}}
	repo, err := s.commit(ctx, path, c)
	var removed []string
	if errors.Is(err, errResharded) {
		repo, removed, freedBytes, freedTags, err = s.untagSharded(ctx, path, d, counts)
	} else {
		removed = slices.Clone(c.journal)
	}
	rooms.settle(ctx, s, err, func() (int64, int64) { return -freedBytes, -freedTags })
	if errors.Is(err, tags.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(removed) > 0 {
		s.event(repo, reasonTagDeleted, "Delete", "tags %s deleted with manifest %s", strings.Join(removed, ", "), d)
	}
	return removed, nil
}

// untagSharded is UntagDigest for a repository whose tags are split over
// TagShards: the tags pointing at d, found in the cache, each removed by a
// change of its own that removes it only if it still points at d; all of
// them share the group commit. An immutable tag among them refuses the
// whole untag before any is removed (each change checks again).
func (s *Store) untagSharded(ctx context.Context, path string, d digest.Digest, counts bool) (*v1.Repository, []string, int64, int64, error) {
	root, err := s.cached(ctx, path)
	if err != nil || root == nil {
		return nil, nil, 0, 0, errors.Join(err, tags.ErrNotFound)
	}
	var names []string
	for _, l := range s.tree(root).Leaves() {
		for _, t := range l.Tags {
			if t.Digest == d.String() {
				names = append(names, t.Name)
			}
		}
	}
	reg, err := s.liveRegistry(ctx)
	if err != nil || reg == nil {
		return nil, nil, 0, 0, errors.Join(err, notFoundRegistry(s.opts))
	}
	rules := s.immutableRules(root, reg)
	for _, name := range names {
		if rule, ok := rules.Match(name); ok {
			return nil, nil, 0, 0, tags.ErrImmutable(name, rule, d, tags.ActionUntagged)
		}
	}
	type result struct {
		repo    *v1.Repository
		removed bool
		freed   int64
		err     error
	}
	results := make([]result, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			c := &change{tags: []string{name}, apply: func(set *tagSet, _ *v1.Registry, rules func() tags.ImmutableRules) (bool, []string, error) {
				r.freed, r.removed = 0, false
				t, ok := set.repo.Status.FindTag(name)
				if !ok || t.Digest != d.String() {
					return false, nil, nil
				}
				if rule, ok := rules().Match(name); ok {
					return false, nil, tags.ErrImmutable(name, rule, d, tags.ActionUntagged)
				}
				if counts {
					r.freed = set.bytes()
				}
				set.repo.Status.RemoveTag(name)
				if counts {
					r.freed -= set.bytes()
				}
				r.removed = true
				return true, []string{name}, nil
			}}
			r.repo, r.err = s.commit(ctx, path, c)
		}()
	}
	wg.Wait()
	var removed []string
	var freedBytes, freedTags int64
	var errs []error
	for i, r := range results {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		if r.removed {
			removed = append(removed, names[i])
			freedBytes += r.freed
			freedTags++
		}
	}
	return root, removed, freedBytes, freedTags, errors.Join(errs...)
}

// createRepository makes the Repository on first push. Replicas racing to
// create it compute the same name; the loser reads the winner's object.
//
// The Event of a creation is the creating push's (Put, EnsureRepository):
// one Event per new repository, not a RepositoryCreated and a TagPushed.
func (s *Store) createRepository(ctx context.Context, reg *v1.Registry, path string, batch []*change) (*v1.Repository, error) {
	if !createsOnPush(reg) {
		return nil, errcode.NameUnknown.With(fmt.Sprintf(
			"repository %s does not exist and Registry %s does not create repositories on push (spec.autoCreateRepositories: false): create a Repository for it", path, reg.Name))
	}
	repo := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{
			Name:      v1.RepositoryObjectName(reg.Name, path),
			Namespace: reg.Namespace,
			Labels:    map[string]string{v1.LabelRegistry: reg.Name},
			// Owned by the Registry, so deleting it deletes its Repositories.
			// No finalizer: a new Repository keeps its content (Retain),
			// which needs no operator at deletion, so a namespace deleted
			// without an operator is not held up by it.
			OwnerReferences: []metav1.OwnerReference{v1.RegistryOwnerReference(reg)},
		},
		Spec: v1.RepositorySpec{Registry: reg.Name, Name: path},
	}
	err := s.client.Create(ctx, repo)
	if apierrors.IsAlreadyExists(err) {
		if err := s.client.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
			return nil, unavailable(err)
		}
		switch {
		case !repo.DeletionTimestamp.IsZero():
			return nil, unavailable(fmt.Errorf("Repository %s of %s is being deleted: push again once it is gone", repo.Name, path))
		case !s.owns(repo, path):
			return nil, errcode.Denied.With(fmt.Sprintf("repository %s cannot be created: the Repository object %s it would be is taken by registry %q, path %q; rename or delete that object",
				path, repo.Name, repo.Spec.Registry, repo.Spec.Name))
		}
		return repo, nil
	}
	if isQuotaRefusal(err) {
		// A ResourceQuota on count/repositories.stevedore.dev: the API
		// server's admission counts creates atomically, so this is the
		// Registry's repository cap (docs/operator.md, Quotas).
		return nil, errcode.Denied.With(fmt.Sprintf("repository %s cannot be created: a ResourceQuota of namespace %s refuses another Repository (%s); delete repositories or raise the quota",
			path, reg.Namespace, quotaMessage(err)))
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
	if i := slices.IndexFunc(batch, func(c *change) bool { return c.create }); i >= 0 {
		batch[i].created = true
	}
	// The status update that follows carries the operator's verdict on the
	// new object, so its reconcile writes nothing (v1.SetClaimed).
	repo.Status.SetClaimed(repo.Generation)
	return repo, nil
}

// Reasons of the Events registryd records on Repositories. client-go's
// events broadcaster folds repeats of a reason on one Repository into a
// series (one request per few minutes), so a tag storm costs a few
// requests; a new repository costs one Event.
const (
	reasonRepositoryCreated = "RepositoryCreated"
	reasonTagPushed         = "TagPushed"
	reasonTagDeleted        = "TagDeleted"
)

func (s *Store) event(repo *v1.Repository, reason, action, note string, args ...any) {
	if s.opts.Events != nil && repo != nil {
		s.opts.Events.Eventf(repo, nil, corev1.EventTypeNormal, reason, action, note, args...)
	}
}

func (s *Store) warn(repo *v1.Repository, reason, action, note string, args ...any) {
	if s.opts.Events != nil && repo != nil {
		s.opts.Events.Eventf(repo, nil, corev1.EventTypeWarning, reason, action, note, args...)
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

// isQuotaRefusal reports whether err is the API server's ResourceQuota
// admission refusing a create: 403 Forbidden with "exceeded quota" (the
// admission plugin's wording; the status carries no finer reason).
func isQuotaRefusal(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "exceeded quota")
}

// quotaMessage is the refusal's own text from "exceeded quota" on: the
// quota's name, and what was requested, used and limited.
func quotaMessage(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "exceeded quota"); i >= 0 {
		return msg[i:]
	}
	return msg
}

func notFoundRegistry(o Options) error {
	return errcode.NameUnknown.With(fmt.Sprintf("Registry %s/%s no longer exists", o.Namespace, o.Registry))
}
