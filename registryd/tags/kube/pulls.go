package kube

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// DefaultPullRecordInterval is how coarse recorded pull times are unless
// Options say otherwise: a tag's pulledAt is written at most once an
// interval, and a replica writes its pulls once an interval, in one status
// update per repository.
const DefaultPullRecordInterval = time.Hour

// pullWriters bounds the repositories whose pulls one flush writes at once.
const pullWriters = 4

// DefaultPullLogLimit bounds the tags a replica remembers pulls of between
// two flushes (about 100 bytes each): a client pulling every tag of every
// repository within an interval cannot grow registryd's memory without
// bound. Pulls past it are not recorded until the next flush.
const DefaultPullLogLimit = 100_000

// pullLog holds the pulls of one replica since its last flush: by
// repository, each tag's first pull in the interval.
type pullLog struct {
	mu      sync.Mutex
	pulls   map[string]map[string]time.Time
	entries int // tags in pulls
	dropped int // pulls not recorded since the last flush: the log was full
}

var _ tags.PullRecorder = (*Store)(nil)

// RecordPull remembers that tag was pulled, in memory. A tag whose cached
// pulledAt is already within the interval is not remembered: the cache
// may only save a write here, never decide one (the flush decides live).
func (s *Store) RecordPull(path, tag string) {
	now := time.Now()
	if repo, err := s.cached(context.Background(), path); err == nil && repo != nil {
		if t, ok := s.tree(repo).Find(tag); ok && t.PulledAt != nil && now.Sub(t.PulledAt.Time) < s.pullInterval() {
			return
		}
	}
	l := &s.pullLog
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.pulls[path][tag]; ok {
		return
	}
	if l.entries >= s.pullLogLimit() {
		l.dropped++
		return
	}
	if l.pulls == nil {
		l.pulls = map[string]map[string]time.Time{}
	}
	if l.pulls[path] == nil {
		l.pulls[path] = map[string]time.Time{}
	}
	l.pulls[path][tag] = now
	l.entries++
}

func (s *Store) pullLogLimit() int {
	if s.opts.PullLogLimit > 0 {
		return s.opts.PullLogLimit
	}
	return DefaultPullLogLimit
}

func (s *Store) pullInterval() time.Duration {
	if s.opts.PullRecordInterval > 0 {
		return s.opts.PullRecordInterval
	}
	return DefaultPullRecordInterval
}

// recordPulls flushes the pull log once an interval until ctx ends, and
// once more then (registryd's shutdown), so a replica going away loses
// no more than the pulls of its last moments.
func (s *Store) recordPulls(ctx context.Context) {
	t := time.NewTicker(s.pullInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			s.FlushPulls(flush)
			cancel()
			return
		case <-t.C:
			s.FlushPulls(ctx)
		}
	}
}

// FlushPulls writes the pulls logged so far: per repository one change
// through the group commit that sets pulledAt on each pulled tag whose
// recorded pull is older than the interval (so of three replicas that all
// served a tag, the first writes and the others find it fresh). A write
// that fails is dropped: pull times are coarse, and the next pull records
// again.
func (s *Store) FlushPulls(ctx context.Context) {
	l := &s.pullLog
	l.mu.Lock()
	pulls, dropped := l.pulls, l.dropped
	l.pulls, l.entries, l.dropped = nil, 0, 0
	l.mu.Unlock()
	if dropped > 0 {
		s.opts.Logger.Warn("kubernetes tag store: the pull log was full; pulls not recorded", "dropped", dropped, "limit", s.pullLogLimit())
	}
	interval := s.pullInterval()
	var g errgroup.Group
	g.SetLimit(pullWriters)
	for path, byTag := range pulls {
		g.Go(func() error {
			_, err := s.commit(ctx, path, &change{tags: slices.Collect(maps.Keys(byTag)), apply: func(set *tagSet, _ *v1.Registry, _ func() tags.ImmutableRules) (bool, []string, error) {
				repo, changed := set.repo, false
				for tag, at := range byTag {
					t, ok := repo.Status.FindTag(tag)
					if !ok || (t.PulledAt != nil && at.Sub(t.PulledAt.Time) < interval) {
						continue
					}
					t.PulledAt = &metav1.Time{Time: at}
					repo.Status.SetTag(t)
					changed = true
				}
				return changed, nil, nil
			}})
			if err != nil && !isStoreError(err) {
				s.opts.Logger.Warn("kubernetes tag store: recording pull times failed; dropped", "repository", path, "tags", len(byTag), "error", err)
			}
			return nil
		})
	}
	_ = g.Wait()
}
