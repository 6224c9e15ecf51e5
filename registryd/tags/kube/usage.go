package kube

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// A Registry's spec.quota bounds the totals of all its repositories, so
// its check cannot live in one Repository's status update. It lives in
// the Registry's status.usage instead: a push reserves its manifest's
// whole content and one tag there (a conditional update that checks the
// quota), then writes the tag, then settles (replaces the reservation by
// what the tag write really added). Reservations count against the quota
// while in flight, so racing pushes on any replicas never take usage past
// it. Deletes settle what they freed the same way. The operator recounts
// usage from the Repositories now and then (controllers/registry_usage.go);
// docs/operator.md gives the argument.

// The same reservations bound a Repository whose tags are split over
// TagShards: its shards' writes are not conditional on each other, so its
// quota and the Registry's tag limit are checked against the Repository's
// status.usage, reserved before a push that may grow it and settled after.

// usageWrite is one reservation made by this replica.
type usageWrite struct {
	id string
}

// errNoRoom is the cause of a refusal by a reservation (the Registry's
// quota, or a split repository's quota or tag limit).
var errNoRoom = errors.New("no room under a quota")

// usageTarget is an object whose status.usage a quota is checked against:
// the Registry (registryUsage) or a split Repository (repositoryUsage).
type usageTarget struct {
	key string // one queue of ops per key
	// load reads the object, from the cache (and this replica's own last
	// write of it) or live, a copy the caller may edit; its usage and the
	// bounds on it (none: nothing to reserve). A nil object: it is gone.
	load     func(ctx context.Context, live bool) (client.Object, **v1.QuotaUsage, usageBounds, error)
	remember func(client.Object)
	gone     func() error
}

// usageBounds is what bounds a usage, worded for the refusal.
type usageBounds struct {
	owner              string // "Registry main"
	holds              string // "its repositories hold"
	bytes, tags        *int64
	bytesRule, tagRule string // "quota of 1k (1000 bytes; spec.quota.bytes)"
}

func (b usageBounds) none() bool { return b.bytes == nil && b.tags == nil }

// quota bounds b by a spec.quota's bytes and tags (nil: unbounded); where
// names the object whose spec it is in the refusal ("" for the owner).
func (b *usageBounds) quota(bytes *resource.Quantity, tags *int64, where string) {
	if bytes != nil {
		b.bytes = ptr.To(bytes.Value())
		b.bytesRule = fmt.Sprintf("quota of %s (%d bytes; %sspec.quota.bytes)", bytes, bytes.Value(), where)
	}
	if tags != nil {
		b.tags = tags
		b.tagRule = fmt.Sprintf("quota of %d tags (%sspec.quota.tags)", *tags, where)
	}
}

// registryUsage is the Registry's usage, bounded by its spec.quota.
func (s *Store) registryUsage() *usageTarget {
	return &usageTarget{
		key: "",
		load: func(ctx context.Context, live bool) (client.Object, **v1.QuotaUsage, usageBounds, error) {
			var reg *v1.Registry
			var err error
			if live {
				reg, err = s.liveRegistry(ctx)
			} else if reg, err = s.registry(ctx); err == nil {
				if own := s.ownRegistry(reg); own != nil {
					reg = own
				}
			}
			if err != nil || reg == nil {
				return nil, nil, usageBounds{}, unavailable(err)
			}
			b := usageBounds{owner: "Registry " + reg.Name, holds: "its repositories hold"}
			if q := reg.Spec.Quota; q != nil {
				b.quota(q.Bytes, q.Tags, "")
			}
			return reg, &reg.Status.Usage, b, nil
		},
		remember: func(obj client.Object) { s.rememberRegistry(obj.(*v1.Registry)) },
		gone:     func() error { return notFoundRegistry(s.opts) },
	}
}

// repositoryUsage is the usage of the Repository of path while its tags
// are split, bounded by its spec.quota and the Registry's tag limit
// (none before it splits: its status update then decides).
func (s *Store) repositoryUsage(path string) *usageTarget {
	return &usageTarget{
		key: "repository " + path,
		load: func(ctx context.Context, live bool) (client.Object, **v1.QuotaUsage, usageBounds, error) {
			var repo *v1.Repository
			var reg *v1.Registry
			var err error
			if live {
				if repo, err = s.live(ctx, path, nil); err == nil && repo != nil {
					reg, err = s.liveRegistry(ctx)
				}
			} else if repo, err = s.cached(ctx, path); err == nil && repo != nil {
				repo = repo.DeepCopy() // shared with the cache
				reg, err = s.registry(ctx)
			}
			if err != nil || repo == nil || reg == nil {
				return nil, nil, usageBounds{}, unavailable(err)
			}
			return repo, &repo.Status.Usage, repositoryBounds(repo, reg), nil
		},
		remember: func(obj client.Object) { s.remember(path, obj.(*v1.Repository)) },
		gone:     func() error { return tags.ErrNotFound },
	}
}

// repositoryBounds are the bounds on a split repository's usage: its
// quota, and the Registry's tag limit when that is lower.
func repositoryBounds(repo *v1.Repository, reg *v1.Registry) usageBounds {
	b := usageBounds{owner: fmt.Sprintf("repository %s (Repository %s)", repo.Spec.Name, repo.Name), holds: "it holds"}
	if !repo.KeepsUsage(reg) {
		return b
	}
	if q := repo.Spec.Quota; q != nil {
		var tags *int64
		if q.Tags != nil {
			tags = ptr.To(int64(*q.Tags))
		}
		b.quota(q.Bytes, tags, "Repository "+repo.Name+" ")
	}
	if limit := int64(reg.Spec.Limits.MaxTagsPerRepository); limit > 0 && (b.tags == nil || limit < *b.tags) {
		b.tags = &limit
		b.tagRule = fmt.Sprintf("limit of %d tags (Registry %s spec.limits.maxTagsPerRepository)", limit, reg.Name)
	}
	return b
}

// usageOp is one reservation or settle waiting for the target's next
// update by this replica: like tag writes (commit.go), the ops that queue
// while one update is in flight share the next, so pushes from one
// replica contend on the object as a batch, not one by one.
type usageOp struct {
	settle      bool
	id          string
	bytes, tags int64 // reserve: what it may add; settle: what changed
	live        bool  // reserve: "no bounds" is said on a live read only
	// verdict, set by the round that decided:
	noQuota bool // reserve: no bounds (nothing reserved)
	err     error
	done    chan struct{}
}

// usageQueues hold, per target, the ops waiting for its next update.
type usageQueues struct {
	mu     sync.Mutex
	queues map[string]*usageQueue // present while draining
}

type usageQueue struct {
	t   *usageTarget
	ops []*usageOp
}

// reserve makes room on t for a write that may add bytes and tags (both
// 0 for a delete, which only marks itself in flight). It returns nil when
// t has no bounds (on a live read, with live). When there is no room it
// returns a DENIED error wrapping errNoRoom, decided on a live read.
func (s *Store) reserve(ctx context.Context, t *usageTarget, bytes, tags int64, live bool) (*usageWrite, error) {
	obj, _, b, err := t.load(ctx, live)
	if err != nil {
		return nil, err
	}
	if obj == nil || b.none() {
		// A quota set a moment ago binds from the next write the cache
		// sees it for; the operator's recount counts what went meanwhile.
		return nil, nil
	}
	op := &usageOp{id: newReservationID(), bytes: bytes, tags: tags, live: live}
	if err := s.usageDo(ctx, t, op); err != nil {
		return nil, err
	}
	if op.noQuota {
		return nil, nil
	}
	return &usageWrite{id: op.id}, nil
}

// settle replaces reservation w on t by what the write really changed
// (bytes and tags, negative for a delete). A settle that fails leaves the
// reservation counted until the operator's recount drops it as stale:
// usage is then over, never under.
func (s *Store) settle(ctx context.Context, t *usageTarget, w *usageWrite, bytes, tags int64) {
	if w == nil {
		return
	}
	if err := s.usageDo(ctx, t, &usageOp{settle: true, id: w.id, bytes: bytes, tags: tags}); err != nil {
		s.opts.Logger.Warn("settling a usage reservation", "on", t.key, "reservation", w.id, "error", err)
	}
}

// usageDo queues op for t and waits for its verdict. An op withdrawn while
// still queued is never applied; one already in an update is decided by
// it, and its verdict returned.
func (s *Store) usageDo(ctx context.Context, t *usageTarget, op *usageOp) error {
	op.done = make(chan struct{})
	qs := &s.usage
	qs.mu.Lock()
	if qs.queues == nil {
		qs.queues = map[string]*usageQueue{}
	}
	q, draining := qs.queues[t.key]
	if !draining {
		q = &usageQueue{t: t}
		qs.queues[t.key] = q
	}
	q.ops = append(q.ops, op)
	qs.mu.Unlock()
	if !draining {
		go s.drainUsage(q)
	}
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		qs.mu.Lock()
		i := slices.Index(q.ops, op)
		if i >= 0 {
			q.ops = slices.Delete(q.ops, i, i+1)
		}
		qs.mu.Unlock()
		if i >= 0 {
			return unavailable(ctx.Err())
		}
		// In an update already: its verdict, so that a reservation made
		// for a client that left is released, not leaked (bounded by the
		// commit deadline).
		<-op.done
		return op.err
	}
}

// drainUsage writes q's ops, batch after batch, until none are left.
func (s *Store) drainUsage(q *usageQueue) {
	qs := &s.usage
	for {
		qs.mu.Lock()
		batch := q.ops
		q.ops = nil
		if len(batch) == 0 {
			delete(qs.queues, q.t.key)
			qs.mu.Unlock()
			return
		}
		qs.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		err := s.writeUsage(ctx, q.t, batch)
		cancel()
		for _, op := range batch {
			if err != nil {
				op.err = err
			}
			close(op.done)
		}
	}
}

// writeUsage applies batch to t's usage in one status update, conditional
// on its resourceVersion: on a conflict it reads t live and applies the
// batch again, until the commit deadline. A round on the cached object
// that refuses a reservation, says t has no bounds for an op that asked
// for a live read, or does not find a reservation to settle (the cache may
// not have this replica's own reservation yet), is run again on a live
// read before anything is said.
func (s *Store) writeUsage(ctx context.Context, t *usageTarget, batch []*usageOp) error {
	obj, u, b, err := t.load(ctx, false)
	if err != nil {
		return err
	}
	live := false
	delay := time.Millisecond
	for attempt := 0; ; attempt++ {
		if obj == nil {
			if obj, u, b, err = t.load(ctx, true); err != nil {
				return err
			}
			if obj == nil {
				return t.gone()
			}
			live = true
		}
		changed, undecided := applyUsage(u, b, live, batch)
		if undecided && !live {
			obj = nil
			continue
		}
		if !changed {
			return nil
		}
		err := s.client.Status().Update(ctx, obj)
		if err == nil {
			t.remember(obj)
			return nil
		}
		if !apierrors.IsConflict(err) {
			return unavailable(fmt.Errorf("updating the usage of %s: %w", b.owner, err))
		}
		s.conflicts.Inc()
		select {
		case <-ctx.Done():
			return unavailable(fmt.Errorf("updating the usage of %s: still conflicting after %d attempts: %w", b.owner, attempt+1, err))
		case <-time.After(delay/2 + rand.N(delay)):
		}
		delay = min(2*delay, 64*time.Millisecond)
		obj = nil // read live
	}
}

// applyUsage applies the ops to *usage (bounded by b; read live or not) in
// order and reports whether it changed and whether a verdict rests on what
// a stale copy may lack (a refusal, a reservation not found, no bounds
// where a live read was asked for).
func applyUsage(usage **v1.QuotaUsage, b usageBounds, live bool, batch []*usageOp) (changed, undecided bool) {
	u := *usage
	now := metav1.Now()
	for _, op := range batch {
		op.err, op.noQuota = nil, false
		if op.settle {
			if u == nil {
				continue // the quota went meanwhile
			}
			i := slices.IndexFunc(u.Pending, func(p v1.UsageReservation) bool { return p.ID == op.id })
			recounted := i < 0 // dropped by a recount as stale: it ran after the reservation
			if i >= 0 {
				recounted = u.Pending[i].Recounted
				u.Pending = slices.Delete(u.Pending, i, i+1)
				changed = true
			} else {
				undecided = true
			}
			// What a recount may already have seen done must not be freed
			// twice; what it may have seen is added again at worst (over,
			// not under).
			if op.bytes > 0 || op.bytes < 0 && !recounted {
				u.Bytes, changed = max(0, u.Bytes+op.bytes), true
			}
			if op.tags > 0 || op.tags < 0 && !recounted {
				u.Tags, changed = max(0, u.Tags+op.tags), true
			}
			continue
		}
		if b.none() {
			op.noQuota = true
			undecided = undecided || op.live && !live
			continue
		}
		if u == nil {
			op.err = unavailable(fmt.Errorf("%s has a quota but its usage is not counted yet (the operator counts it): push again shortly", b.owner))
			undecided = true
			continue
		}
		pb, pt := pendingTotals(u)
		var full []string
		if b.bytes != nil && op.bytes > 0 && u.Bytes+pb+op.bytes > *b.bytes {
			full = append(full, fmt.Sprintf("%d more bytes would pass its %s: %s %d, pushes in flight %d", op.bytes, b.bytesRule, b.holds, u.Bytes, pb))
		}
		if b.tags != nil && op.tags > 0 && u.Tags+pt+op.tags > *b.tags {
			full = append(full, fmt.Sprintf("a new tag would pass its %s: %s %d, pushes in flight %d", b.tagRule, b.holds, u.Tags, pt))
		}
		if len(full) > 0 {
			op.err = errcode.Denied.Wrap(errNoRoom, fmt.Sprintf("%s has no room: %s", b.owner, strings.Join(full, "; ")))
			undecided = true
			continue
		}
		u.Pending = append(u.Pending, v1.UsageReservation{ID: op.id, Bytes: op.bytes, Tags: op.tags, At: now})
		changed = true
	}
	return changed, undecided
}

// rememberRegistry keeps the Registry this replica just wrote, so its next
// batch starts from it rather than from a cache that has not seen it.
func (s *Store) rememberRegistry(reg *v1.Registry) {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	s.ownReg = ownRegistryWrite{reg: reg.DeepCopy(), at: time.Now()}
}

// ownRegistry is this replica's last write of the Registry when it is
// newer than cached; a deep copy.
func (s *Store) ownRegistry(cached *v1.Registry) *v1.Registry {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	w := s.ownReg
	if w.reg == nil || time.Since(w.at) > ownWriteTTL || cached == nil || cached.UID != w.reg.UID {
		return nil
	}
	if c, err := resourceversion.CompareResourceVersion(w.reg.ResourceVersion, cached.ResourceVersion); err != nil || c <= 0 {
		return nil
	}
	return w.reg.DeepCopy()
}

type ownRegistryWrite struct {
	reg *v1.Registry
	at  time.Time
}

// pushRoom is what a push may do on a target's bounds: the reservation it
// made (nil: none needed), and, when there was no room for all of it, the
// refusal and what it may still do (a push that does not grow usage
// passes a full quota).
type pushRoom struct {
	t                 *usageTarget
	w                 *usageWrite
	refusal           error // nil: room for everything
	growBytes, addTag bool
}

// reservePush reserves for a push of contentSize bytes and one tag; with
// no room for both, it reserves what there is room for (the tag alone,
// the bytes alone, or nothing but the mark of a write in flight, which
// settles what a move to smaller content frees).
func (s *Store) reservePush(ctx context.Context, t *usageTarget, contentSize int64, live bool) (pushRoom, error) {
	w, err := s.reserve(ctx, t, contentSize, 1, live)
	if !errors.Is(err, errNoRoom) {
		return pushRoom{t: t, w: w, growBytes: true, addTag: true}, err
	}
	refusal := err
	for _, try := range []struct{ bytes, tags int64 }{{0, 1}, {contentSize, 0}, {0, 0}} {
		w, err = s.reserve(ctx, t, try.bytes, try.tags, live)
		if errors.Is(err, errNoRoom) {
			continue
		}
		return pushRoom{t: t, w: w, refusal: refusal, growBytes: try.bytes > 0, addTag: try.tags > 0}, err
	}
	return pushRoom{}, refusal // not reached: reserve(0, 0) checks nothing
}

// settleAfter settles w once its tag write has an outcome: what changed
// (delta, read only then) when it committed, nothing when it failed or was
// withdrawn before any update took it (commit waits for the outcome of a
// write in flight even when the client has gone). The settle outlives the
// request (bounded by the commit deadline); one that fails leaves the
// reservation counted until the recount drops it: over, never under.
func (s *Store) settleAfter(ctx context.Context, t *usageTarget, w *usageWrite, err error, delta func() (bytes, tags int64)) {
	if w == nil {
		return
	}
	var bytes, tags int64
	if err == nil {
		bytes, tags = delta()
	}
	s.settle(context.WithoutCancel(ctx), t, w, bytes, tags)
}

// allows reports whether the room lets a write grow usage by grewBytes
// and add a tag (newTag); the refusal if not.
func (r pushRoom) allows(grewBytes bool, newTag bool) error {
	if grewBytes && !r.growBytes || newTag && !r.addTag {
		return r.refusal
	}
	return nil
}

// pendingTotals sums the reservations in flight.
func pendingTotals(u *v1.QuotaUsage) (bytes, tags int64) {
	for _, p := range u.Pending {
		bytes += p.Bytes
		tags += p.Tags
	}
	return bytes, tags
}

func newReservationID() string {
	b := make([]byte, 8)
	_, _ = cryptorand.Read(b)
	return hex.EncodeToString(b)
}
