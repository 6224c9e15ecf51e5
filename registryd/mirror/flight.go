package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// leasePrefix holds one object per upstream fetch in progress, across
// every replica sharing the bucket (docs/mirror.md):
//
//	_stevedore/mirror/leases/<alg>/<hex>   {"holder": …, "expires": …}
const leasePrefix = storage.MirrorLeasesPrefix

func leaseKey(d digest.Digest) string {
	return leasePrefix + d.Algorithm().String() + "/" + d.Encoded()
}

// group runs one call per key at a time in this process; callers that come
// while it runs share its result.
type group[K comparable] struct {
	mu    sync.Mutex
	calls map[K]*call
}

type call struct {
	done chan struct{}
	err  error
}

// do runs fn unless a call for k is running, and then waits for that one
// (or for ctx). leader reports whether fn was this caller's.
func (g *group[K]) do(ctx context.Context, k K, fn func() error) (leader bool, err error) {
	g.mu.Lock()
	if c, ok := g.calls[k]; ok {
		g.mu.Unlock()
		select {
		case <-c.done:
			return false, c.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if g.calls == nil {
		g.calls = map[K]*call{}
	}
	c := &call{done: make(chan struct{})}
	g.calls[k] = c
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.calls, k)
		g.mu.Unlock()
		close(c.done)
	}()
	c.err = fn()
	return true, c.err
}

type lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// fetchOnce makes content d appear under blobs/ by running fetch at most
// once across every replica sharing the bucket: in this process the
// group, across processes a lease object created with IfNotExist. A
// process that finds the lease held waits for the content to appear, or
// for the lease to end (the holder failed or died: its lease is then
// released or expires) to try itself.
//
// The fetch runs under a context of its own, not ctx: callers waiting on
// it in this process must not lose it when the first client goes away.
// leader reports whether fetch ran in this call.
func (m *Mirror) fetchOnce(ctx context.Context, d digest.Digest, fetch func(ctx context.Context) error) (leader bool, err error) {
	ran := false
	_, err = m.flights.do(ctx, d, func() error {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.FetchTimeout)
		defer cancel()
		var err error
		ran, err = m.leased(fctx, d, fetch)
		return err
	})
	return ran, err
}

// leased is fetchOnce's cross-process part.
func (m *Mirror) leased(ctx context.Context, d digest.Digest, fetch func(ctx context.Context) error) (bool, error) {
	b := m.store.Bucket()
	for {
		if ok, err := b.Exists(ctx, storage.BlobKey(d)); err != nil {
			return false, storage.Classify(err, storage.BlobKey(d))
		} else if ok {
			return false, nil
		}
		held, err := m.acquire(ctx, d)
		if err != nil {
			return false, err
		}
		if !held {
			if err := m.waitLease(ctx, d); err != nil {
				return false, err
			}
			continue
		}
		// The holder before may have stored the content and released
		// the lease between the check above and the acquire.
		if ok, err := b.Exists(ctx, storage.BlobKey(d)); err != nil || ok {
			m.release(ctx, d)
			return false, storage.Classify(err, storage.BlobKey(d))
		}
		stop := m.renew(ctx, d)
		err = fetch(ctx)
		stop()
		m.release(ctx, d)
		return true, err
	}
}

// acquire creates d's lease; false when another holds it.
func (m *Mirror) acquire(ctx context.Context, d digest.Digest) (bool, error) {
	body, _ := json.Marshal(lease{Holder: m.id, Expires: time.Now().Add(m.opts.LeaseTTL)})
	// CreateSmall, not WriteSmall with IfNotExist: fileblob's IfNotExist is
	// a stat before a rename, which two replicas can both pass (then both
	// fetched the blob; seen once in TestMirror on CI).
	err := storage.CreateSmall(ctx, m.store.Local(), leaseKey(d), body, &blob.WriterOptions{ContentType: "application/json"})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, storage.ErrExists):
		return false, nil
	}
	return false, fmt.Errorf("taking the fetch lease of %s: %w", d, err)
}

// waitLease returns once d's lease is gone (released, or removed because
// it expired) or d's content is stored, polling the bucket.
func (m *Mirror) waitLease(ctx context.Context, d digest.Digest) error {
	b := m.store.Bucket()
	t := time.NewTicker(m.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if ok, err := b.Exists(ctx, storage.BlobKey(d)); err != nil {
			return storage.Classify(err, storage.BlobKey(d))
		} else if ok {
			return nil
		}
		raw, err := b.ReadAll(ctx, leaseKey(d))
		if err != nil {
			if errors.Is(storage.Classify(err, leaseKey(d)), storage.ErrNotFound) {
				return nil
			}
			return storage.Classify(err, leaseKey(d))
		}
		var l lease
		if json.Unmarshal(raw, &l) != nil || time.Now().After(l.Expires) {
			// Its holder stopped renewing it: take over. Two replicas may
			// both get here; the IfNotExist of acquire picks one of them.
			m.log.WarnContext(ctx, "mirror: a fetch lease expired; fetching again", "digest", d, "holder", l.Holder)
			if err := b.Delete(ctx, leaseKey(d)); err != nil && !errors.Is(storage.Classify(err, leaseKey(d)), storage.ErrNotFound) {
				return storage.Classify(err, leaseKey(d))
			}
			return nil
		}
	}
}

// renew rewrites d's lease every third of its TTL until stop is called,
// so a long fetch keeps it and a dead holder's lease expires.
func (m *Mirror) renew(ctx context.Context, d digest.Digest) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(m.opts.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			body, _ := json.Marshal(lease{Holder: m.id, Expires: time.Now().Add(m.opts.LeaseTTL)})
			if err := storage.WriteSmall(ctx, m.store.Bucket(), leaseKey(d), body, &blob.WriterOptions{ContentType: "application/json"}); err != nil && ctx.Err() == nil {
				m.log.WarnContext(ctx, "mirror: renewing a fetch lease", "digest", d, "error", err)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// release deletes d's lease; a failure leaves it to expire.
func (m *Mirror) release(ctx context.Context, d digest.Digest) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.store.Bucket().Delete(ctx, leaseKey(d)); err != nil && !errors.Is(storage.Classify(err, leaseKey(d)), storage.ErrNotFound) {
		m.log.WarnContext(ctx, "mirror: releasing a fetch lease; it will expire", "digest", d, "error", err)
	}
}
