package kube

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// journalWriters bounds the journal writes of one batch in flight at once.
const journalWriters = 8

// commitTimeout bounds one group commit, which serves several requests and so
// cannot use any one request's context.
const commitTimeout = 30 * time.Second

// change is one tag write waiting for its repository's next status update.
type change struct {
	// apply edits repo and reports whether it changed it, and which tags
	// the journal must then mirror from status (none when it refuses); err
	// is meant for this request alone (immutable tag, limit, not found).
	// It calls rules for the immutable-tag rules whenever it is about to
	// move or remove a tag that exists (see round).
	apply func(set *tagSet, reg *v1.Registry, rules func() tags.ImmutableRules) (changed bool, journal []string, err error)
	// tags are the tags apply may touch, which route it to the TagShards
	// holding them once the repository's tags are split; whole: it may
	// touch any (UntagDigest), which such a repository does tag by tag.
	tags  []string
	whole bool
	// create allows creating the Repository (pushes, not deletes).
	create bool
	done   chan error
	// err and journal are apply's verdict in the round that decided.
	err     error
	journal []string
	// repo is the Repository as written (for the caller's Event).
	repo *v1.Repository
	// created: this change's write created the Repository (the first
	// creating change of the batch that did), so its Event says so.
	created bool
}

// tagSet is what a change edits: the tags of one object (the Repository's
// status, or a TagShard's, in a copy of the Repository), and, when the
// repository's tags are split, the digests from the cache of those
// elsewhere.
type tagSet struct {
	repo   *v1.Repository
	others *otherLeaves // nil: repo holds every tag
}

// count is the tags of a repository whose tags are not split; a split
// one's tag bounds are decided by its reservation (usage.go), never by a
// count here.
func (t *tagSet) count() int32 { return int32(len(t.repo.Status.Tags)) }

// bytes is the repository's logical size (see RepositoryStatus.CountBytes).
func (t *tagSet) bytes() int64 {
	if t.others == nil {
		return t.repo.Status.CountBytes()
	}
	digests := t.others.digests()
	var n int64
	for _, size := range digests {
		n += size
	}
	for _, tag := range t.repo.Status.Tags {
		if _, ok := digests[tag.Digest]; !ok {
			n += tag.ContentSize
		}
	}
	// A digest twice in this object counts once.
	seen := map[string]bool{}
	for _, tag := range t.repo.Status.Tags {
		if _, ok := digests[tag.Digest]; !ok {
			if seen[tag.Digest] {
				n -= tag.ContentSize
			}
			seen[tag.Digest] = true
		}
	}
	return n
}

// committer queues the changes of one replica per repository, so a replica
// has at most one status update in flight for a repository and the changes
// that arrive meanwhile share the next one (group commit). Concurrent pushers
// then contend only across replicas, not per tag.
type committer struct {
	mu     sync.Mutex
	queues map[string][]*change // by repository path; present while draining
}

// commit queues c for path and waits for its outcome.
func (s *Store) commit(ctx context.Context, path string, c *change) (*v1.Repository, error) {
	c.done = make(chan error, 1)
	q := &s.committer
	q.mu.Lock()
	if q.queues == nil {
		q.queues = map[string][]*change{}
	}
	pending, draining := q.queues[path]
	q.queues[path] = append(pending, c)
	q.mu.Unlock()
	if !draining {
		go s.drain(path)
	}
	select {
	case err := <-c.done:
		return c.repo, err
	case <-ctx.Done():
		// Still queued: withdrawn, so nothing is written after the client
		// was told it failed. Already in a status update: that update
		// decides, and its outcome is returned (bounded by the commit
		// deadline) though the client is gone: a Registry quota's settle
		// must know whether the tag was written (usage.go).
		if q.withdraw(path, c) {
			return nil, ctx.Err()
		}
		err := <-c.done
		return c.repo, err
	}
}

// withdraw takes c out of path's queue if no batch has taken it yet, and
// reports whether it did.
func (q *committer) withdraw(path string, c *change) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	pending := q.queues[path]
	i := slices.Index(pending, c)
	if i < 0 {
		return false
	}
	q.queues[path] = slices.Delete(pending, i, i+1)
	return true
}

// drain writes the queued changes of path, batch after batch, until none are left.
func (s *Store) drain(path string) {
	q := &s.committer
	for {
		q.mu.Lock()
		batch := q.queues[path]
		if len(batch) == 0 {
			delete(q.queues, path)
			q.mu.Unlock()
			return
		}
		q.queues[path] = batch[:0:0]
		q.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		repo, mirror, err := s.write(ctx, path, batch)
		if err != nil || repo == nil {
			cancel()
			finish(batch, repo, err)
			continue
		}
		// The journal follows in the background while the next batch's
		// status update goes out: a batch's clients are answered once
		// both are done, and the mirror's read-back makes concurrent
		// mirrors of one path end on the last status, as it does for
		// mirrors of different replicas.
		go func() {
			defer cancel()
			if mirror != nil {
				mirror(ctx)
			} else {
				s.mirrorRepository(ctx, path, repo, batch)
			}
			finish(batch, repo, nil)
		}()
	}
}

// finish answers the changes of a batch: err for all (the write failed), or
// each its own verdict.
func finish(batch []*change, repo *v1.Repository, err error) {
	for _, c := range batch {
		c.repo = repo
		if err != nil {
			c.done <- err
		} else {
			c.done <- c.err
		}
	}
}

// mirrorFunc mirrors into the journal what a batch's write made final
// (see mirror); nil: the batch went into the Repository's status.
type mirrorFunc func(context.Context)

// errUndecided: a round on cached data would write nothing (every change
// is a no-op or refused). Only a live read, or a status update whose
// resourceVersion check passed, may say a write has nothing to do or must
// be refused, so the round is run again on a live read.
var errUndecided = errors.New("decided on the cache alone")

// errRegistryStale: a round consulted the immutable-tag rules while the
// Registry it holds came from the cache. The Repository's own rules are
// covered by its status update's resourceVersion check (spec and status
// share it), the Registry's are not, so the round is run again with the
// Registry read live before anything is written.
var errRegistryStale = errors.New("immutable-tag rules read from the cached Registry")

// write applies a batch to the Repository of path in one status update (the
// caller then mirrors into the journal the tags that update, or a live read,
// made final). On a conflict it re-reads live and re-applies, until the commit
// deadline: a short, jittered, capped backoff keeps a replica that lost a
// few rounds from starving behind one that keeps winning.
func (s *Store) write(ctx context.Context, path string, batch []*change) (*v1.Repository, mirrorFunc, error) {
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, nil, unavailable(err)
	}
	regLive := false
	if reg == nil {
		if reg, err = s.liveRegistry(ctx); err != nil {
			return nil, nil, err
		}
		regLive = true
	}
	if reg == nil {
		return nil, nil, notFoundRegistry(s.opts)
	}
	delay := time.Millisecond
	live := false
	for attempt := 0; ; attempt++ {
		repo, mirror, err := s.round(ctx, path, batch, reg, live, regLive)
		live = true
		// A refusal may rest on the cached Registry too (its tag limit,
		// autoCreateRepositories), and so may moving or removing a tag
		// (its immutable-tag rules): decide it again on the live one.
		if !regLive && (errors.Is(err, errUndecided) && refused(batch) || isStoreError(err) || errors.Is(err, errRegistryStale)) {
			if reg, err = s.liveRegistry(ctx); err != nil {
				return nil, nil, err
			}
			if reg == nil {
				return nil, nil, notFoundRegistry(s.opts)
			}
			regLive = true
			continue
		}
		switch {
		case errors.Is(err, errUndecided):
			continue
		case errors.Is(err, errResplit):
			live = false // this replica's own write of the split Repository stands in for the cache
			continue
		case apierrors.IsConflict(err):
			s.conflicts.Inc()
			select {
			case <-ctx.Done():
				return nil, nil, unavailable(fmt.Errorf("updating Repository status: still conflicting after %d attempts: %w", attempt+1, err))
			case <-time.After(delay/2 + rand.N(delay)):
			}
			delay = min(2*delay, 64*time.Millisecond)
			continue
		case err != nil && !isStoreError(err):
			return nil, nil, unavailable(fmt.Errorf("updating Repository status: %w", err))
		case err != nil:
			return nil, nil, err
		}
		return repo, mirror, nil
	}
}

// round is one read-apply-update round; live forces a read from the API
// server. A round on cached data stands only if its status update passes
// the resourceVersion check; one that would write nothing is errUndecided.
// regLive says reg was read from the API server in this write; a round
// that consults the immutable-tag rules on a cached Registry is
// errRegistryStale.
func (s *Store) round(ctx context.Context, path string, batch []*change, reg *v1.Registry, live, regLive bool) (*v1.Repository, mirrorFunc, error) {
	known, err := s.cached(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	var repo *v1.Repository
	fromCache := known != nil && !live
	switch {
	case fromCache:
		repo = known.DeepCopy() // shared with the cache; this round edits it
	case known == nil && !live && wantsCreate(batch) && createsOnPush(reg):
		// A push the cache knows no repository for: most often a new one.
		// Creating first saves the read that would find nothing; an
		// existing object answers AlreadyExists and is read then.
		if repo, err = s.createRepository(ctx, reg, path, batch); err != nil {
			return nil, nil, err
		}
	default:
		if repo, err = s.live(ctx, path, known); err != nil {
			return nil, nil, err
		}
	}
	if repo == nil {
		if !wantsCreate(batch) {
			for _, c := range batch {
				c.err, c.journal = tags.ErrNotFound, nil
			}
			return nil, nil, nil
		}
		if repo, err = s.createRepository(ctx, reg, path, batch); err != nil {
			return nil, nil, err
		}
	}
	if repo.Status.TagsSplit {
		return s.shardedRound(ctx, path, repo, batch, reg, regLive)
	}
	var orig *v1.Repository
	if len(repo.Status.Tags)+len(batch) > s.maxTags() {
		orig = repo.DeepCopy() // frozen as it is if the batch takes it past one object
	}
	changed, consulted := false, false
	rules := func() tags.ImmutableRules {
		consulted = true
		return s.immutableRules(repo, reg)
	}
	set := &tagSet{repo: repo}
	for _, c := range batch {
		var did bool
		did, c.journal, c.err = c.apply(set, reg, rules)
		changed = changed || did
	}
	if consulted && !regLive {
		return nil, nil, errRegistryStale
	}
	if !changed {
		if fromCache {
			return nil, nil, errUndecided
		}
		return repo, nil, nil
	}
	if orig != nil && len(repo.Status.Tags) > s.maxTags() && len(repo.Status.Tags) > len(orig.Status.Tags) {
		// Past one object: its tags freeze here and go on in TagShards.
		orig.Status.TagsSplit = true
		if orig.KeepsUsage(reg) {
			// Counted here, exactly: every tag is in this object.
			orig.Status.Usage = orig.Status.Usage.Recounted(orig.Status.CountBytes(), int64(len(orig.Status.Tags)), metav1.Now())
		}
		if err := s.client.Status().Update(ctx, orig); err != nil {
			return nil, nil, err
		}
		s.remember(path, orig)
		s.opts.Logger.Info("repository's tags split over TagShards", "repository", path, "tags", len(orig.Status.Tags))
		return nil, nil, errResplit
	}
	repo.Status.Recount()
	if err := s.client.Status().Update(ctx, repo); err != nil {
		return nil, nil, err
	}
	s.remember(path, repo)
	return repo, nil, nil
}

// errResplit: the round split the repository's tags; the batch is routed again.
var errResplit = errors.New("the repository's tags were split")

// refused reports whether a rule refused a change of batch (not found is no rule).
func refused(batch []*change) bool {
	for _, c := range batch {
		var e *errcode.Error
		if errors.As(c.err, &e) {
			return true
		}
	}
	return false
}

func wantsCreate(batch []*change) bool {
	for _, c := range batch {
		if c.create {
			return true
		}
	}
	return false
}

// mirror writes into the journal, for every tag the batch's final round
// named, what status now holds for it (the descriptor, or no entry), so the
// journal only ever holds what status committed, and a client's retry of a
// write status already has repairs a journal write that failed.
//
// Replicas write the journal after their status updates, so a replica that
// committed first may write the journal last. Each writer therefore reads
// status live after its journal writes and rewrites the tags that moved;
// whoever writes a tag last has then read, after that write, the last
// status, so the journal ends equal to status. A journal write or read that
// fails makes the writes of those tags 503: status has them, and the
// client's retry repairs the journal.
//
// entry is what the object written holds for a tag; readBack reads it (or
// wherever its tags went) again live: what it holds now (nil: the
// Repository is gone, and its deletion policy decides about the journal),
// and whether that is unchanged.
func (s *Store) mirror(ctx context.Context, path string, entry func(string) journalEntry,
	readBack func(context.Context) (func(string) journalEntry, bool, error), batch []*change) {
	pending := map[string]bool{}
	for _, c := range batch {
		for _, tag := range c.journal {
			pending[tag] = true
		}
	}
	if len(pending) == 0 {
		return
	}
	var failed error
	wrote := map[string]journalEntry{}
	for len(pending) > 0 {
		// Each tag is its own journal object: written side by side (a
		// durable write on file:// is an fsync).
		var g errgroup.Group
		g.SetLimit(journalWriters)
		for tag := range pending {
			e := entry(tag)
			wrote[tag] = e
			g.Go(func() error { return s.journalWrite(ctx, path, tag, e) })
		}
		if failed = g.Wait(); failed != nil {
			break
		}
		now, same, err := readBack(ctx)
		if err != nil {
			failed = fmt.Errorf("reading the tags of %s back after the journal write: %w", path, err)
			break
		}
		if now == nil || same {
			break
		}
		clear(pending)
		for tag, e := range wrote {
			if now(tag) != e {
				pending[tag] = true
			}
		}
		entry = now
	}
	if failed == nil {
		return
	}
	for _, c := range batch {
		if len(c.journal) > 0 {
			c.err = unavailable(fmt.Errorf("the tag is in Repository status but not in the bucket's tag journal: %w", failed))
		}
	}
}

// mirrorRepository is mirror for a batch written into the Repository's status.
func (s *Store) mirrorRepository(ctx context.Context, path string, repo *v1.Repository, batch []*change) {
	s.mirror(ctx, path, func(tag string) journalEntry { return entryOf(repo, tag) }, func(ctx context.Context) (func(string) journalEntry, bool, error) {
		now, err := s.readBack(ctx, repo, path)
		if err != nil || now == nil {
			return nil, false, err
		}
		if now == repo {
			return func(tag string) journalEntry { return entryOf(repo, tag) }, true, nil
		}
		repo = now
		if now.Status.TagsSplit {
			tree, l := s.liveTree(ctx, now)
			for _, c := range batch {
				for _, tag := range c.journal {
					tree.Find(tag)
				}
			}
			if l.err != nil {
				return nil, false, l.err
			}
			return func(tag string) journalEntry {
				t, ok := tree.Find(tag)
				if !ok {
					return journalEntry{}
				}
				return journalEntry{digest: t.Digest, mediaType: t.MediaType, size: t.Size}
			}, false, nil
		}
		return func(tag string) journalEntry { return entryOf(now, tag) }, false, nil
	}, batch)
}

// readBack reads repo again live: repo itself while its resourceVersion has
// not moved (a metadata-only read: a Repository near the tag limit is most
// of a megabyte), else the whole object; nil if it is gone.
func (s *Store) readBack(ctx context.Context, repo *v1.Repository, path string) (*v1.Repository, error) {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(v1.GroupVersion.WithKind("Repository"))
	err := s.client.Get(ctx, client.ObjectKeyFromObject(repo), m)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, unavailable(fmt.Errorf("reading Repository %s: %w", repo.Name, err))
	case m.UID == repo.UID && m.ResourceVersion == repo.ResourceVersion:
		return repo, nil
	}
	return s.get(ctx, repo.Name, path)
}

// journalEntry is what the journal holds for a tag; the zero value: none.
type journalEntry struct {
	digest, mediaType string
	size              int64
}

func entryOf(repo *v1.Repository, tag string) journalEntry { return entryOfStatus(&repo.Status, tag) }

func entryOfStatus(st *v1.RepositoryStatus, tag string) journalEntry {
	t, ok := st.FindTag(tag)
	if !ok {
		return journalEntry{}
	}
	return journalEntry{digest: t.Digest, mediaType: t.MediaType, size: t.Size}
}

func (s *Store) journalWrite(ctx context.Context, path, tag string, e journalEntry) error {
	if e.digest == "" {
		if err := s.opts.Journal.Delete(ctx, path, tag); err != nil && !errors.Is(err, tags.ErrNotFound) {
			return fmt.Errorf("deleting %s:%s from the tag journal: %w", path, tag, err)
		}
		return nil
	}
	d := ocispec.Descriptor{MediaType: e.mediaType, Digest: digest.Digest(e.digest), Size: e.size}
	if err := s.opts.Journal.Put(ctx, path, tag, d); err != nil {
		return fmt.Errorf("writing %s:%s to the tag journal: %w", path, tag, err)
	}
	return nil
}
