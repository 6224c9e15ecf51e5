package kube_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestShardedTagsAcrossReplicas: three replicas whose objects hold 8 tags
// each push, move and delete 600 tags of one repository at once, so the
// tags split many times over while writers race. Every replica then
// lists and reads exactly the tags written, from its cache alone (no API
// request); the journal holds the same; no object holds more than 8 tags,
// and a split shard whose two children exist holds none.
func TestShardedTagsAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	j := journal(t)
	const perObject = 8
	small := func(o *kube.Options) { o.MaxTagsPerObject = perObject }
	replicas := []*kube.Store{
		replicaWith(t, env.Config, reg, j, small),
		replicaWith(t, env.Config, reg, j, small),
		replicaWith(t, env.Config, reg, j, small),
	}
	const n = 600
	want := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := replicas[w%3]
			for i := w; i < n; i += 24 {
				tag := fmt.Sprintf("t%04d", i)
				d := desc(tag)
				if err := s.Put(ctx, "app", tag, d); err != nil {
					errs <- fmt.Errorf("put %s: %w", tag, err)
					continue
				}
				switch i % 10 {
				case 3: // moved by another replica
					d = desc(tag + "-moved")
					if err := replicas[(w+1)%3].Put(ctx, "app", tag, d); err != nil {
						errs <- fmt.Errorf("move %s: %w", tag, err)
						continue
					}
				case 7: // deleted by another replica
					if err := replicas[(w+2)%3].Delete(ctx, "app", tag); err != nil {
						errs <- fmt.Errorf("delete %s: %w", tag, err)
					}
					continue
				}
				mu.Lock()
				want[tag] = d.Digest.String()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every replica converges on exactly want, from its cache.
	names := slices.Sorted(maps.Keys(want))
	for i, s := range replicas {
		eventuallyErr(t, 10*time.Second, func() error {
			var got []string
			last := ""
			for {
				page, err := s.List(ctx, "app", 7, last)
				if err != nil {
					return err
				}
				if len(page) == 0 {
					break
				}
				got = append(got, page...)
				last = page[len(page)-1]
			}
			if !slices.Equal(got, names) {
				return fmt.Errorf("replica %d lists %d tags, want %d", i, len(got), len(names))
			}
			return nil
		})
		before := s.LiveReads()
		for _, tag := range names {
			d, err := s.Get(ctx, "app", tag)
			if err != nil || d.Digest.String() != want[tag] {
				t.Fatalf("replica %d: %s is %v (%v), want %s", i, tag, d.Digest, err, want[tag])
			}
		}
		for tag := range 10 {
			if _, err := s.Get(ctx, "app", fmt.Sprintf("t%04d", 10*tag+7)); err != tags.ErrNotFound {
				t.Fatalf("replica %d: a deleted tag reads %v", i, err)
			}
		}
		if _, err := s.List(ctx, "app", 0, ""); err != nil {
			t.Fatal(err)
		}
		if d := s.LiveReads() - before; d > 0 {
			t.Errorf("replica %d: %v live reads for reads the cache holds", i, d)
		}
	}
	if got := journalTags(t, j, "app"); !maps.Equal(got, want) {
		t.Errorf("the journal holds %d tags, want %d", len(got), len(want))
	}
	var shards v1.TagShardList
	if err := env.Client.List(ctx, &shards, client.InNamespace(reg.Namespace)); err != nil {
		t.Fatal(err)
	}
	leaves, emptied := 0, 0
	prefixes := map[string]bool{}
	for _, sh := range shards.Items {
		prefixes[sh.Spec.Prefix] = true
	}
	for _, sh := range shards.Items {
		if len(sh.Tags) > perObject {
			t.Errorf("shard %s holds %d tags, over %d", sh.Spec.Prefix, len(sh.Tags), perObject)
		}
		switch p := sh.Spec.Prefix; {
		case !sh.Split:
			leaves++
		case prefixes[p+"0"] && prefixes[p+"1"]:
			// Both children exist: nothing reads the parent's tags, and
			// kept they would double what every replica caches.
			if len(sh.Tags) > 0 {
				t.Errorf("split shard %s keeps %d tags though both its children exist", p, len(sh.Tags))
			}
			emptied++
		}
	}
	if emptied == 0 {
		t.Error("no split shard with both children: the test tests nothing")
	}
	repo := liveRepository(t, reg, "app")
	if !repo.Status.TagsSplit || len(repo.Status.Tags) > perObject {
		t.Errorf("the Repository holds %d tags, split %v", len(repo.Status.Tags), repo.Status.TagsSplit)
	}
	t.Logf("%d tags in %d shards, %d of them leaves", len(want), len(shards.Items), leaves)
}

// TestShardedUntagAndPulls: a manifest's tags spread over several shards
// all go with it, and pull times land in the shards.
func TestShardedUntagAndPulls(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	s := replicaWith(t, env.Config, reg, journal(t), func(o *kube.Options) { o.MaxTagsPerObject = 4 })
	shared := desc("shared")
	for i := range 40 {
		d := desc(fmt.Sprint(i))
		if i%4 == 0 {
			d = shared
		}
		if err := s.Put(ctx, "app", fmt.Sprintf("v%d", i), d); err != nil {
			t.Fatal(err)
		}
	}
	s.RecordPull("app", "v1")
	s.FlushPulls(ctx)
	removed, err := s.UntagDigest(ctx, "app", shared.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 10 {
		t.Errorf("untagged %v, want the 10 tags of the shared manifest", removed)
	}
	eventuallyErr(t, 10*time.Second, func() error {
		all, err := s.List(ctx, "app", 0, "")
		if err != nil || len(all) != 30 {
			return fmt.Errorf("%d tags left (%v), want 30", len(all), err)
		}
		return nil
	})
	for i := range 40 {
		_, err := s.Get(ctx, "app", fmt.Sprintf("v%d", i))
		if (i%4 == 0) != (err == tags.ErrNotFound) {
			t.Errorf("v%d: %v", i, err)
		}
	}
	var shards v1.TagShardList
	if err := env.Client.List(ctx, &shards, client.InNamespace(reg.Namespace)); err != nil {
		t.Fatal(err)
	}
	pulled := false
	for _, sh := range shards.Items {
		for _, tg := range sh.Tags {
			if tg.Name == "v1" && !sh.Split && tg.PulledAt != nil {
				pulled = true
			}
			if digest.Digest(tg.Digest) == shared.Digest && !sh.Split {
				t.Errorf("shard %s still holds %s", sh.Spec.Prefix, tg.Name)
			}
		}
	}
	if !pulled {
		t.Error("v1's pull time is in no shard")
	}
}

// TestShardedTagLimit: a Registry's tag limit counts every shard.
func TestShardedTagLimit(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 20 })
	s := replicaWith(t, env.Config, reg, journal(t), func(o *kube.Options) { o.MaxTagsPerObject = 4 })
	for i := range 20 {
		if err := s.Put(ctx, "app", fmt.Sprintf("v%d", i), desc(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the cache, which counts the other shards
	wantDenied(t, s.Put(ctx, "app", "v20", desc("20")), "maxTagsPerRepository")
	if err := s.Put(ctx, "app", "v3", desc("moved")); err != nil {
		t.Errorf("moving a tag at the limit: %v", err)
	}
}

// eventuallyErr retries check until it passes or within ends, then fails with its last error.
func eventuallyErr(t testing.TB, within time.Duration, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	t.Fatal(err)
}

// tagTree reads every tag of repo live, wherever they are (status or TagShards).
func tagTree(t testing.TB, repo *v1.Repository) v1.TagTree {
	t.Helper()
	var list v1.TagShardList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(repo.Namespace),
		client.MatchingLabels{v1.LabelRepositoryUID: string(repo.UID)}); err != nil {
		t.Fatal(err)
	}
	return v1.NewTagTree(repo, list.Items)
}
