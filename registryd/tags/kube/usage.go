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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/resourceversion"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
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

// usageWrite is one reservation made by this replica.
type usageWrite struct {
	id string
}

// errRegistryFull is the cause of a refusal by the Registry's quota.
var errRegistryFull = errors.New("over the Registry's quota")

// usageOp is one reservation or settle waiting for the replica's next
// update of the Registry's usage: like tag writes (commit.go), the ops
// that queue while one update is in flight share the next, so pushes from
// one replica contend on the Registry as a batch, not one by one.
type usageOp struct {
	settle      bool
	id          string
	bytes, tags int64 // reserve: what it may add; settle: what changed
	// verdict, set by the round that decided:
	noQuota bool // reserve: the Registry has no quota (nothing reserved)
	err     error
	done    chan struct{}
}

// usageQueue holds the ops waiting for the next update.
type usageQueue struct {
	mu       sync.Mutex
	ops      []*usageOp
	draining bool
}

// reserve makes room for a write that may add bytes and tags (both 0 for a
// delete, which only marks itself in flight). It returns nil when the
// Registry has no quota. When the quota has no room it returns a DENIED
// error wrapping errRegistryFull, decided on a live read.
func (s *Store) reserve(ctx context.Context, bytes, tags int64) (*usageWrite, error) {
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	if reg == nil || reg.Spec.Quota == nil {
		// A quota set a moment ago binds from the next write the cache
		// sees it for; the operator's recount counts what went meanwhile.
		return nil, nil
	}
	op := &usageOp{id: newReservationID(), bytes: bytes, tags: tags}
	if err := s.usageDo(ctx, op); err != nil {
		return nil, err
	}
	if op.noQuota {
		return nil, nil
	}
	return &usageWrite{id: op.id}, nil
}

// settle replaces reservation w by what the write really changed (bytes
// and tags, negative for a delete). A settle that fails leaves the
// reservation counted until the operator's recount drops it as stale:
// usage is then over, never under.
func (s *Store) settle(ctx context.Context, w *usageWrite, bytes, tags int64) {
	if w == nil {
		return
	}
	if err := s.usageDo(ctx, &usageOp{settle: true, id: w.id, bytes: bytes, tags: tags}); err != nil {
		s.opts.Logger.Warn("settling a Registry usage reservation", "reservation", w.id, "error", err)
	}
}

// usageDo queues op and waits for its verdict. An op withdrawn while still
// queued is never applied; one already in an update is decided by it, and
// its verdict returned.
func (s *Store) usageDo(ctx context.Context, op *usageOp) error {
	op.done = make(chan struct{})
	q := &s.usage
	q.mu.Lock()
	q.ops = append(q.ops, op)
	start := !q.draining
	q.draining = true
	q.mu.Unlock()
	if start {
		go s.drainUsage()
	}
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		q.mu.Lock()
		i := slices.Index(q.ops, op)
		if i >= 0 {
			q.ops = slices.Delete(q.ops, i, i+1)
		}
		q.mu.Unlock()
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

// drainUsage writes the queued ops, batch after batch, until none are left.
func (s *Store) drainUsage() {
	q := &s.usage
	for {
		q.mu.Lock()
		batch := q.ops
		q.ops = nil
		if len(batch) == 0 {
			q.draining = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		err := s.writeUsage(ctx, batch)
		cancel()
		for _, op := range batch {
			if err != nil {
				op.err = err
			}
			close(op.done)
		}
	}
}

// writeUsage applies batch to the Registry's usage in one status update,
// conditional on its resourceVersion: on a conflict it reads the Registry
// live and applies the batch again, until the commit deadline. A round on
// the cached Registry that refuses a reservation, or does not find a
// reservation to settle (the cache may not have this replica's own
// reservation yet), is run again on a live read before anything is said.
func (s *Store) writeUsage(ctx context.Context, batch []*usageOp) error {
	reg, err := s.registry(ctx)
	if err != nil {
		return unavailable(err)
	}
	live := false
	if own := s.ownRegistry(reg); own != nil {
		reg = own
	}
	delay := time.Millisecond
	for attempt := 0; ; attempt++ {
		if reg == nil {
			if reg, err = s.liveRegistry(ctx); err != nil {
				return err
			}
			if reg == nil {
				return notFoundRegistry(s.opts)
			}
			live = true
		}
		changed, undecided := applyUsage(reg, batch)
		if undecided && !live {
			reg = nil
			continue
		}
		if !changed {
			return nil
		}
		err := s.client.Status().Update(ctx, reg)
		if err == nil {
			s.rememberRegistry(reg)
			return nil
		}
		if !apierrors.IsConflict(err) {
			return unavailable(fmt.Errorf("updating Registry %s usage: %w", reg.Name, err))
		}
		s.conflicts.Inc()
		select {
		case <-ctx.Done():
			return unavailable(fmt.Errorf("updating Registry %s usage: still conflicting after %d attempts: %w", reg.Name, attempt+1, err))
		case <-time.After(delay/2 + rand.N(delay)):
		}
		delay = min(2*delay, 64*time.Millisecond)
		reg = nil // read live
	}
}

// applyUsage applies the ops to reg's status.usage in order and reports
// whether it changed and whether a verdict rests on what a stale copy may
// lack (a refusal, a reservation not found).
func applyUsage(reg *v1.Registry, batch []*usageOp) (changed, undecided bool) {
	q := reg.Spec.Quota
	u := reg.Status.Usage
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
		if q == nil {
			op.noQuota = true
			continue
		}
		if u == nil {
			op.err = unavailable(fmt.Errorf("Registry %s has a quota but its usage is not counted yet (the operator counts it): push again shortly", reg.Name))
			undecided = true
			continue
		}
		pb, pt := pendingTotals(u)
		var full []string
		if q.Bytes != nil && op.bytes > 0 && u.Bytes+pb+op.bytes > q.Bytes.Value() {
			full = append(full, fmt.Sprintf("%d more bytes would pass its quota of %s (%d bytes; spec.quota.bytes): its repositories hold %d, pushes in flight %d",
				op.bytes, q.Bytes, q.Bytes.Value(), u.Bytes, pb))
		}
		if q.Tags != nil && op.tags > 0 && u.Tags+pt+op.tags > *q.Tags {
			full = append(full, fmt.Sprintf("a new tag would pass its quota of %d tags (spec.quota.tags): its repositories hold %d, pushes in flight %d",
				*q.Tags, u.Tags, pt))
		}
		if len(full) > 0 {
			op.err = errcode.Denied.Wrap(errRegistryFull, fmt.Sprintf("Registry %s has no room: %s", reg.Name, strings.Join(full, "; ")))
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

// pushRoom is what a push may do on the Registry's quota: the reservation
// it made, and, when there was no room for all of it, the refusal and what
// it may still do (a push that does not grow usage passes a full quota).
type pushRoom struct {
	w                 *usageWrite
	refusal           error // nil: room for everything
	growBytes, addTag bool
}

// reservePush reserves for a push of contentSize bytes and one tag; with
// no room for both, it reserves what there is room for (the tag alone,
// the bytes alone, or nothing but the mark of a write in flight, which
// settles what a move to smaller content frees).
func (s *Store) reservePush(ctx context.Context, contentSize int64) (pushRoom, error) {
	w, err := s.reserve(ctx, contentSize, 1)
	if !errors.Is(err, errRegistryFull) {
		return pushRoom{w: w, growBytes: true, addTag: true}, err
	}
	refusal := err
	for _, try := range []struct{ bytes, tags int64 }{{0, 1}, {contentSize, 0}, {0, 0}} {
		w, err = s.reserve(ctx, try.bytes, try.tags)
		if errors.Is(err, errRegistryFull) {
			continue
		}
		return pushRoom{w: w, refusal: refusal, growBytes: try.bytes > 0, addTag: try.tags > 0}, err
	}
	return pushRoom{}, refusal // not reached: reserve(0, 0) checks nothing
}

// settleAfter settles w once its tag write has an outcome: what changed
// (delta, read only then) when it committed, nothing when it failed or was
// withdrawn before any update took it (commit waits for the outcome of a
// write in flight even when the client has gone). The settle outlives the
// request (bounded by the commit deadline); one that fails leaves the
// reservation counted until the recount drops it: over, never under.
func (s *Store) settleAfter(ctx context.Context, w *usageWrite, err error, delta func() (bytes, tags int64)) {
	if w == nil {
		return
	}
	var bytes, tags int64
	if err == nil {
		bytes, tags = delta()
	}
	s.settle(context.WithoutCancel(ctx), w, bytes, tags)
}

// pendingTotals sums the reservations in flight.
func pendingTotals(u *v1.RegistryUsage) (bytes, tags int64) {
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
