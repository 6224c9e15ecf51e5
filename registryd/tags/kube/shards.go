package kube

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// A repository's tags past one object (v1.MaxTagsPerObject) are split over
// TagShards by the bits of their names' hashes (see v1.TagShard). The
// protocol rests on one rule: a split object's tags never change again.
// Splitting is one write conditional on the object's resourceVersion (or a
// create, for a shard that did not exist); a writer that decided on the
// object before it split fails that check and routes again. A child is
// created by whichever writer first needs it, from its frozen parent's
// tags; AlreadyExists sends the writer to read it. So a split needs no
// second step, and a crash at any point leaves nothing to repair. (Once
// both of its children exist, a split object is emptied: see emptyParent.)

func shardKey(uid types.UID, prefix string) string { return string(uid) + "/" + prefix }

func (s *Store) maxTags() int {
	if s.opts.MaxTagsPerObject > 0 {
		return s.opts.MaxTagsPerObject
	}
	return v1.MaxTagsPerObject
}

// tree reads the tags of root from the cache (and this replica's own
// shard writes the cache has not caught up with).
func (s *Store) tree(root *v1.Repository) v1.TagTree {
	return v1.TagTree{Root: root, Shard: func(prefix string) *v1.TagShard { return s.cachedShard(root, prefix) }}
}

func (s *Store) cachedShard(root *v1.Repository, prefix string) *v1.TagShard {
	key := shardKey(root.UID, prefix)
	cached := s.shards.get(key)
	if own := s.ownShard(key, cached); own != nil {
		return own
	}
	return cached
}

// liveShards reads the shards of one Repository from the API server, each
// at most once; the first error sticks.
type liveShards struct {
	s    *Store
	root *v1.Repository
	ctx  context.Context
	read map[string]*v1.TagShard
	err  error
}

func (s *Store) liveTree(ctx context.Context, root *v1.Repository) (v1.TagTree, *liveShards) {
	l := &liveShards{s: s, root: root, ctx: ctx, read: map[string]*v1.TagShard{}}
	return v1.TagTree{Root: root, Shard: l.get}, l
}

func (l *liveShards) get(prefix string) *v1.TagShard {
	if sh, ok := l.read[prefix]; ok || l.err != nil {
		return sh
	}
	if sh := l.s.cachedShard(l.root, prefix); sh != nil && sh.Split {
		return sh // split is final: any copy routes alike (emptied only once both children exist)
	}
	l.s.liveReads.Inc()
	sh := &v1.TagShard{}
	err := l.s.client.Get(l.ctx, client.ObjectKey{Namespace: l.root.Namespace, Name: v1.TagShardName(l.root, prefix)}, sh)
	switch {
	case apierrors.IsNotFound(err):
		sh = nil
	case err != nil:
		l.err = unavailable(fmt.Errorf("reading the tag shard %s of Repository %s: %w", prefix, l.root.Name, err))
		return nil
	case sh.Spec.RepositoryUID != l.root.UID || sh.Spec.Prefix != prefix:
		sh = nil // not this Repository's: the name is a convention
	}
	l.read[prefix] = sh
	return sh
}

type ownShardWrite struct {
	shard *v1.TagShard
	at    time.Time
}

// rememberShard keeps a shard this replica just wrote, as remember does a
// Repository.
func (s *Store) rememberShard(sh *v1.TagShard) {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	if s.ownShards == nil {
		s.ownShards = map[string]ownShardWrite{}
	}
	s.ownShards[shardKey(sh.Spec.RepositoryUID, sh.Spec.Prefix)] = ownShardWrite{shard: sh, at: time.Now()}
}

func (s *Store) ownShard(key string, cached *v1.TagShard) *v1.TagShard {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	w, ok := s.ownShards[key]
	if !ok {
		return nil
	}
	if time.Since(w.at) > ownWriteTTL || (cached != nil && cached.UID == w.shard.UID && !newer(w.shard, cached)) {
		delete(s.ownShards, key)
		return nil
	}
	if cached != nil && cached.UID != w.shard.UID {
		return nil
	}
	return w.shard
}

// errResharded: a change that reads the whole repository (UntagDigest)
// met a repository whose tags are split; its caller does it tag by tag.
var errResharded = errors.New("the repository's tags are split over TagShards")

// shardedRound writes the changes of batch into the TagShards of root.
func (s *Store) shardedRound(ctx context.Context, path string, root *v1.Repository, batch []*change, reg *v1.Registry, regLive bool) (*v1.Repository, mirrorFunc, error) {
	var items []routed
	for _, c := range batch {
		switch {
		case c.whole:
			c.err, c.journal = errResharded, nil
		case len(c.tags) == 0:
			c.err, c.journal = nil, nil // EnsureRepository: it exists
		default:
			c.err, c.journal = nil, nil // the leaves' verdicts, merged (leafMirrors.settle)
			items = append(items, routed{c, c.tags})
		}
	}
	m := &leafMirrors{}
	if err := s.writeLeaves(ctx, path, root, items, s.tree(root), reg, regLive, m); err != nil {
		return nil, nil, err
	}
	return root, m.run, nil
}

// leafMirrors collects the journal mirrors of the leaves a batch wrote, run
// side by side after the batch (while the next one is written).
type leafMirrors struct {
	mu   sync.Mutex
	jobs []mirrorFunc
}

func (m *leafMirrors) add(f mirrorFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.jobs = append(m.jobs, f)
}

// settle gives changes this leaf's verdicts, merged with their other
// leaves' (the journal's tags added, the first error kept).
func (m *leafMirrors) settle(changes, verdicts []*change) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, c := range changes {
		c.journal = append(c.journal, verdicts[i].journal...)
		if c.err == nil {
			c.err = verdicts[i].err
		}
	}
}

func (m *leafMirrors) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, f := range m.jobs {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	wg.Wait()
}

// writeLeaves routes changes to the leaves of tree that hold their tags and
// writes each leaf's, side by side.
func (s *Store) writeLeaves(ctx context.Context, path string, root *v1.Repository, changes []routed, tree v1.TagTree, reg *v1.Registry, regLive bool, m *leafMirrors) error {
	groups := route(tree, changes)
	if len(groups) == 1 {
		for _, g := range groups {
			return s.writeLeaf(ctx, path, root, g, reg, regLive, m)
		}
	}
	var eg errgroup.Group
	for _, g := range groups {
		eg.Go(func() error { return s.writeLeaf(ctx, path, root, g, reg, regLive, m) })
	}
	return eg.Wait()
}

// routed is a change and those of its tags that one leaf holds.
type routed struct {
	c    *change
	tags []string
}

// route groups changes by the leaf each of their tags lives in; a change
// of several tags (pull times) goes to each of their leaves, with the
// tags that leaf holds.
func route(tree v1.TagTree, changes []routed) map[string][]routed {
	groups := map[string][]routed{}
	for _, r := range changes {
		byLeaf := map[string][]string{}
		for _, tag := range r.tags {
			p := tree.Home(v1.HashTag(tag)).Prefix
			byLeaf[p] = append(byLeaf[p], tag)
		}
		for p, list := range byLeaf {
			groups[p] = append(groups[p], routed{r.c, list})
		}
	}
	return groups
}

// writeLeaf applies changes to the one leaf that holds their tags, in one
// write conditional on it (an update, or the create of a shard that does
// not exist yet), then mirrors the journal. On a conflict it reads the
// shards live and routes again: the leaf may have split meanwhile.
func (s *Store) writeLeaf(ctx context.Context, path string, root *v1.Repository, items []routed, reg *v1.Registry, regLive bool, m *leafMirrors) error {
	changes := make([]*change, len(items))
	for i, r := range items {
		changes[i] = r.c
	}
	live, rootLive := false, false
	delay := time.Millisecond
	for attempt := 0; ; attempt++ {
		tree, l := s.tree(root), (*liveShards)(nil)
		if live {
			tree, l = s.liveTree(ctx, root)
		}
		groups := route(tree, items)
		if l != nil && l.err != nil {
			return l.err
		}
		if len(groups) > 1 {
			return s.writeLeaves(ctx, path, root, items, tree, reg, regLive, m)
		}
		leaf := tree.Home(v1.HashTag(items[0].tags[0]))
		set := &tagSet{repo: root.DeepCopy(), others: s.othersOf(root, leaf.Prefix)}
		set.repo.Status.Tags = append([]v1.TagStatus(nil), leaf.Tags...)
		changed, consulted := false, false
		rules := func() tags.ImmutableRules {
			consulted = true
			return s.immutableRules(set.repo, reg)
		}
		// This leaf's verdicts: a change of several tags (pull times) is
		// applied in each of their leaves at once; m.settle merges.
		verdicts := make([]*change, len(changes))
		for i, c := range changes {
			v := &change{}
			var did bool
			did, v.journal, v.err = c.apply(set, reg, rules)
			verdicts[i] = v
			changed = changed || did
		}
		if consulted && !(regLive && rootLive) || !changed && live && refused(verdicts) && !(regLive && rootLive) {
			// The rules come from the Repository's and the Registry's
			// specs, which this write is not conditional on: read both.
			var err error
			if reg, err = s.liveRegistry(ctx); err == nil && reg == nil {
				err = notFoundRegistry(s.opts)
			}
			if err != nil {
				return err
			}
			if r, err := s.live(ctx, path, root); err != nil || r == nil || r.UID != root.UID {
				return errors.Join(err, unavailable(errors.New("the Repository changed while its tags were written")))
			} else {
				root = r
			}
			regLive, rootLive, live = true, true, true
			continue
		}
		if !changed {
			if !live {
				live = true // undecided: only a live read may say there is nothing to write
				continue
			}
			m.add(func(ctx context.Context) { s.mirrorLeaf(ctx, path, root, leaf, verdicts); m.settle(changes, verdicts) })
			return nil
		}
		var err error
		written := leaf
		if len(set.repo.Status.Tags) > s.maxTags() && len(set.repo.Status.Tags) > len(leaf.Tags) {
			err = s.split(ctx, root, leaf)
			if err == nil {
				continue // route again: the tags go one level down
			}
		} else {
			written, err = s.writeTags(ctx, root, leaf, set.repo.Status.Tags)
		}
		switch {
		case err == nil:
			m.add(func(ctx context.Context) {
				s.mirrorLeaf(ctx, path, root, written, verdicts)
				m.settle(changes, verdicts)
			})
			return nil
		case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
			s.conflicts.Inc()
			live = true
			select {
			case <-ctx.Done():
				return unavailable(fmt.Errorf("writing tag shard %s: still conflicting after %d attempts: %w", leaf.Prefix, attempt+1, err))
			case <-time.After(delay/2 + rand.N(delay)):
			}
			delay = min(2*delay, 64*time.Millisecond)
		default:
			return unavailable(fmt.Errorf("writing tag shard %s of Repository %s: %w", leaf.Prefix, root.Name, err))
		}
	}
}

// writeTags writes the tags of leaf: an update of its shard, conditional on
// the resourceVersion read, or the create of a shard not made yet.
func (s *Store) writeTags(ctx context.Context, root *v1.Repository, leaf v1.TagLeaf, list []v1.TagStatus) (v1.TagLeaf, error) {
	var sh *v1.TagShard
	var err error
	if leaf.Virtual {
		sh = v1.NewTagShard(root, leaf.Prefix, list, false)
		err = s.client.Create(ctx, sh)
	} else {
		sh = leaf.Shard.DeepCopy()
		sh.Tags = list
		err = s.client.Update(ctx, sh)
	}
	if err != nil {
		return leaf, err
	}
	s.rememberShard(sh)
	if leaf.Virtual {
		s.emptyParent(ctx, root, leaf.Prefix)
	}
	return v1.TagLeaf{Prefix: leaf.Prefix, Shard: sh, Tags: sh.Tags}, nil
}

// emptyParent empties the tags of the split parent of the shard of prefix,
// just created, once its sibling exists too. A split parent's tags are
// read only to derive a child that does not exist yet; kept, they would
// double the tags every replica caches (at 100,000 tags, 8,519 objects of
// which 4,328 split parents). Nothing reads them once both children
// exist: a cache that holds the emptied parent holds both children too,
// because an informer sees one kind's events in resourceVersion order and
// both creates came before the update (so the emptied parent is not kept
// as this replica's own write ahead of its cache). The sibling is read
// live, so of two writers creating the two children at once, the second
// sees the first. Best effort: a parent left full costs memory only.
func (s *Store) emptyParent(ctx context.Context, root *v1.Repository, prefix string) {
	if len(prefix) < 2 {
		return // the root's children: its frozen status stays (at most one object of tags)
	}
	parentPrefix, last := prefix[:len(prefix)-1], prefix[len(prefix)-1]
	sibling := &metav1.PartialObjectMetadata{}
	sibling.SetGroupVersionKind(v1.GroupVersion.WithKind("TagShard"))
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: root.Namespace, Name: v1.TagShardName(root, parentPrefix+string('0'+'1'-last))}, sibling); err != nil ||
		sibling.Labels[v1.LabelRepositoryUID] != string(root.UID) {
		return // not there yet: its creator empties the parent
	}
	parent := s.cachedShard(root, parentPrefix)
	for range 2 {
		if parent == nil { // not cached yet, or the cached copy was stale: read it live
			parent = &v1.TagShard{}
			if err := s.client.Get(ctx, client.ObjectKey{Namespace: root.Namespace, Name: v1.TagShardName(root, parentPrefix)}, parent); err != nil {
				return
			}
		}
		if !parent.Split || len(parent.Tags) == 0 || parent.Spec.RepositoryUID != root.UID {
			return
		}
		emptied := parent.DeepCopy()
		emptied.Tags = nil
		err := s.client.Update(ctx, emptied)
		if !apierrors.IsConflict(err) {
			if err != nil {
				s.opts.Logger.Debug("emptying a split tag shard", "repository", root.Spec.Name, "prefix", parentPrefix, "error", err)
			}
			return
		}
		parent = nil
	}
}

// split freezes leaf: its tags stay, and from now on live in its children.
func (s *Store) split(ctx context.Context, root *v1.Repository, leaf v1.TagLeaf) error {
	var sh *v1.TagShard
	var err error
	if leaf.Virtual {
		sh = v1.NewTagShard(root, leaf.Prefix, leaf.Tags, true)
		err = s.client.Create(ctx, sh)
	} else {
		sh = leaf.Shard.DeepCopy()
		sh.Split = true
		err = s.client.Update(ctx, sh)
	}
	if err == nil {
		s.rememberShard(sh)
		s.opts.Logger.Debug("tag shard split", "repository", root.Spec.Name, "prefix", leaf.Prefix, "tags", len(leaf.Tags))
		if leaf.Virtual {
			s.emptyParent(ctx, root, leaf.Prefix)
		}
	}
	return err
}

// othersOf sums, from the cache, the digests' sizes of the tags of root
// outside the leaf of prefix, once and only when asked (a bytes count:
// usage.go).
func (s *Store) othersOf(root *v1.Repository, prefix string) *otherLeaves {
	return &otherLeaves{digests: sync.OnceValue(func() map[string]int64 {
		sizes := map[string]int64{}
		for _, l := range s.tree(root).Leaves() {
			if l.Prefix == prefix {
				continue
			}
			for _, t := range l.Tags {
				sizes[t.Digest] = t.ContentSize
			}
		}
		return sizes
	})}
}

// otherLeaves are the leaves of a split repository besides the one a
// change edits: their digests and the sizes they hold.
type otherLeaves struct {
	digests func() map[string]int64
}

// mirrorLeaf mirrors into the journal what the leaf written holds for the
// changes' tags, reading it back until it holds still (see mirror).
func (s *Store) mirrorLeaf(ctx context.Context, path string, root *v1.Repository, leaf v1.TagLeaf, changes []*change) {
	entries := func(list []v1.TagStatus) func(string) journalEntry {
		st := v1.RepositoryStatus{Tags: list}
		return func(tag string) journalEntry { return entryOfStatus(&st, tag) }
	}
	current := leaf
	s.mirror(ctx, path, entries(leaf.Tags), func(ctx context.Context) (func(string) journalEntry, bool, error) {
		if current.Shard != nil {
			m := &metav1.PartialObjectMetadata{}
			m.SetGroupVersionKind(v1.GroupVersion.WithKind("TagShard"))
			err := s.client.Get(ctx, client.ObjectKeyFromObject(current.Shard), m)
			if err == nil && m.UID == current.Shard.UID && m.ResourceVersion == current.Shard.ResourceVersion {
				return entries(current.Tags), true, nil
			}
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, false, unavailable(err)
			}
		}
		// Moved or split: where each tag lives now, read live.
		r, err := s.live(ctx, path, root)
		if err != nil || r == nil {
			return nil, false, err
		}
		tree, l := s.liveTree(ctx, r)
		find := func(tag string) journalEntry {
			t, ok := tree.Find(tag)
			if !ok {
				return journalEntry{}
			}
			return journalEntry{digest: t.Digest, mediaType: t.MediaType, size: t.Size}
		}
		current = v1.TagLeaf{}
		// Read every tag's leaf now, so an error shows before the compare.
		for _, c := range changes {
			for _, tag := range c.journal {
				find(tag)
			}
		}
		if l.err != nil {
			return nil, false, l.err
		}
		return find, false, nil
	}, changes)
}
