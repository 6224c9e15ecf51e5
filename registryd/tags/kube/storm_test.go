package kube_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob/fileblob"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestReplicaStorm runs three replicas of one Registry over one file://
// journal. Workers push, delete and untag a handful of shared tags at random
// through any replica, under a tag limit that refuses some pushes; every
// such push has its own digest, so a refused one is recognisable. Each
// worker also owns a tag it moves between two digests and deletes through
// any replica: no one else writes it, so after each answer a live read must
// agree with it. Afterwards every replica reads what status holds, status
// equals the journal, and neither holds a refused push.
func TestReplicaStorm(t *testing.T) {
	const (
		ops     = 450
		workers = 9
		limit   = 9 // 6 shared and 9 owned tags compete for it
	)
	names := []string{"a", "b", "c", "d", "e", "f"}
	ctx := context.Background()
	reg := newRegistry(t, func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = limit })
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	j := tags.NewBucket(b)
	replicas := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}

	var mu sync.Mutex
	accepted, refused := map[string]bool{}, map[string]bool{}
	var recent []digest.Digest // accepted digests, for untagging
	counts := map[string]int{}
	count := func(what string) { mu.Lock(); counts[what]++; mu.Unlock() }

	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < ops; i += workers {
				s := replicas[rand.N(len(replicas))]
				tag := names[rand.N(len(names))]
				switch r := rand.N(10); {
				case r < 3:
					own := fmt.Sprintf("own-%d", w)
					if rand.N(3) == 0 {
						err := s.Delete(ctx, "app", own)
						if err != nil && !errors.Is(err, tags.ErrNotFound) {
							t.Errorf("Delete %s: %v", own, err)
						}
						if d, ok := statusTags(t, reg, "app")[own]; ok {
							t.Errorf("Delete %s answered %v; status has it at %s", own, err, d)
						}
						count("own delete")
						continue
					}
					d := desc(fmt.Sprintf("own-%d-%d", w, rand.N(2)))
					err := s.Put(ctx, "app", own, d)
					var e *errcode.Error
					switch {
					case err == nil:
						if got := statusTags(t, reg, "app")[own]; got != d.Digest.String() {
							t.Errorf("Put %s %s answered 201; status says %q", own, d.Digest, got)
						}
						count("own push")
					case errors.As(err, &e) && e.Code == errcode.Denied:
						count("own push refused")
					default:
						t.Errorf("Put %s: %v", own, err)
					}
				case r < 7:
					d := desc(fmt.Sprintf("push-%d", i))
					err := s.Put(ctx, "app", tag, d)
					var e *errcode.Error
					switch {
					case err == nil:
						mu.Lock()
						accepted[d.Digest.String()] = true
						recent = append(recent, d.Digest)
						mu.Unlock()
						count("push")
					case errors.As(err, &e) && e.Code == errcode.Denied:
						mu.Lock()
						refused[d.Digest.String()] = true
						mu.Unlock()
						count("push refused")
					default:
						t.Errorf("Put %s: %v", tag, err)
					}
				case r < 9:
					switch err := s.Delete(ctx, "app", tag); {
					case err == nil:
						count("delete")
					case errors.Is(err, tags.ErrNotFound):
						count("delete not found")
					default:
						t.Errorf("Delete %s: %v", tag, err)
					}
				default:
					mu.Lock()
					var d digest.Digest
					if len(recent) > 0 {
						d = recent[len(recent)-1-rand.N(min(len(recent), 4))]
					}
					mu.Unlock()
					if d == "" {
						continue
					}
					removed, err := s.UntagDigest(ctx, "app", d)
					if err != nil {
						t.Errorf("UntagDigest %s: %v", d, err)
					}
					count(fmt.Sprintf("untag removing %d", len(removed)))
				}
			}
		}()
	}
	wg.Wait()
	conflicts := 0.0
	for _, s := range replicas {
		conflicts += s.Conflicts()
	}
	t.Logf("%d operations from %d workers on 3 replicas in %v: %v; %v conflicts", ops, workers, time.Since(start).Round(time.Millisecond), counts, conflicts)

	status := statusTags(t, reg, "app")
	if got := journalTags(t, j, "app"); !equalMaps(got, status) {
		t.Errorf("journal %v, status %v", got, status)
	}
	if len(status) > limit {
		t.Errorf("status holds %d tags, over the limit of %d", len(status), limit)
	}
	for tag, d := range status {
		if strings.HasPrefix(tag, "own-") {
			continue
		}
		if !accepted[d] || refused[d] {
			t.Errorf("tag %s points at %s: accepted %v, refused %v", tag, d, accepted[d], refused[d])
		}
	}
	for i, s := range replicas {
		for _, tag := range append(slices.Clone(names), slices.Collect(maps.Keys(status))...) {
			eventually(t, func() bool {
				got, err := s.Get(ctx, "app", tag)
				if want, ok := status[tag]; ok {
					return err == nil && got.Digest.String() == want
				}
				return errors.Is(err, tags.ErrNotFound)
			})
		}
		t.Logf("replica %d reads what status holds", i)
	}
}
