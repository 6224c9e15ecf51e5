package kube

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// commitTimeout bounds one group commit, which serves several requests and so
// cannot use any one request's context.
const commitTimeout = 30 * time.Second

// change is one tag write waiting for its repository's next status update.
type change struct {
	// apply edits repo; it reports whether it changed anything, or an error
	// meant for this request alone (immutable tag, limit, not found).
	apply func(ctx context.Context, repo *v1.Repository, reg *v1.Registry) (bool, error)
	// create allows creating the Repository (pushes, not deletes).
	create bool
	done   chan error
	// err is apply's verdict in the attempt that was written.
	err error
	// repo is the Repository as written (for the caller's Event).
	repo *v1.Repository
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
		// decides, and the client, gone, is not told.
		q.withdraw(path, c)
		return nil, ctx.Err()
	}
}

// withdraw takes c out of path's queue if no batch has taken it yet.
func (q *committer) withdraw(path string, c *change) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if pending := q.queues[path]; pending != nil {
		q.queues[path] = slices.DeleteFunc(pending, func(p *change) bool { return p == c })
	}
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
		repo, err := s.write(ctx, path, batch)
		cancel()
		for _, c := range batch {
			c.repo = repo
			if err != nil {
				c.done <- err
			} else {
				c.done <- c.err
			}
		}
	}
}

// write applies a batch to the Repository of path in one status update.
// On a conflict it re-reads live and re-applies, until the commit deadline:
// a short, jittered, capped backoff keeps a replica that lost a few rounds
// from starving behind one that keeps winning.
func (s *Store) write(ctx context.Context, path string, batch []*change) (*v1.Repository, error) {
	reg, err := s.registry(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	if reg == nil {
		return nil, notFoundRegistry(s.opts)
	}
	delay := time.Millisecond
	for attempt := 0; ; attempt++ {
		repo, err := s.tryWrite(ctx, path, batch, reg, attempt > 0)
		if !apierrors.IsConflict(err) {
			if err != nil && !isStoreError(err) {
				return nil, unavailable(fmt.Errorf("updating Repository status: %w", err))
			}
			return repo, err
		}
		s.conflicts.Inc()
		select {
		case <-ctx.Done():
			return nil, unavailable(fmt.Errorf("updating Repository status: still conflicting after %d attempts: %w", attempt+1, err))
		case <-time.After(delay/2 + rand.N(delay)):
		}
		delay = min(2*delay, 64*time.Millisecond)
	}
}

// tryWrite is one read-apply-update round; live forces a read from the API
// server (after a conflict the cache is known to be stale).
func (s *Store) tryWrite(ctx context.Context, path string, batch []*change, reg *v1.Registry, live bool) (*v1.Repository, error) {
	var repo *v1.Repository
	var err error
	if !live {
		if repo, err = s.cached(ctx, path); repo != nil {
			repo = repo.DeepCopy() // shared with the cache; this round edits it
		}
	}
	if live || repo == nil {
		repo, err = s.live(ctx, path, repo)
	}
	if err != nil {
		return nil, err
	}
	if repo == nil {
		if !wantsCreate(batch) {
			for _, c := range batch {
				c.err = tags.ErrNotFound
			}
			return nil, nil
		}
		if repo, err = s.createRepository(ctx, reg, path); err != nil {
			return nil, err
		}
	}
	changed := false
	for _, c := range batch {
		var did bool
		did, c.err = c.apply(ctx, repo, reg)
		changed = changed || did
	}
	if !changed {
		return repo, nil
	}
	if err := s.client.Status().Update(ctx, repo); err != nil {
		return nil, err
	}
	s.remember(path, repo)
	return repo, nil
}

func wantsCreate(batch []*change) bool {
	for _, c := range batch {
		if c.create {
			return true
		}
	}
	return false
}
