package kube_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// objectLimit is the size every object holding tags must stay under: the
// API server's scale guidance (KEP-95) is written for objects up to 50 KB,
// and #18 asks for 64 KiB.
const objectLimit = 64 << 10

// TestTagObjectsStaySmall fills one repository with 1,000 tags of the
// longest names the spec allows, every field of a tag set (a content size
// of 13 digits, a recorded pull), and measures every object the API server
// stores for it (managed fields included): the Repository and each
// TagShard stay under 64 KiB, and nothing refuses the tags.
func TestTagObjectsStaySmall(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a repository with 1,000 tags")
	}
	ctx := context.Background()
	reg := newRegistry(t, nil)
	const n = 1000
	s := replica(t, reg, journal(t))
	name := func(i int) string { return fmt.Sprintf("%05d-%s", i, strings.Repeat("x", 122)) } // 128 characters, the spec's maximum

	const workers = 64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				// A content size of 1 TiB: as many digits as any real one.
				if err := s.PutContent(ctx, "app", name(i), desc(name(i)), 1<<40); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every tag pulled: each holds a pulledAt too.
	for i := range n {
		s.RecordPull("app", name(i))
	}
	s.FlushPulls(ctx)

	repoName := v1.RepositoryObjectName(reg.Name, "app")
	raw, err := rawObject(ctx, reg, "repositories", repoName)
	if err != nil {
		t.Fatal(err)
	}
	largest, objects := len(raw), 1
	var shards v1.TagShardList
	if err := env.Client.List(ctx, &shards, client.InNamespace(reg.Namespace)); err != nil {
		t.Fatal(err)
	}
	pulled := 0
	for _, sh := range shards.Items {
		raw, err := rawObject(ctx, reg, "tagshards", sh.Name)
		if err != nil {
			t.Fatal(err)
		}
		objects++
		largest = max(largest, len(raw))
		if !sh.Split {
			for _, tg := range sh.Tags {
				if tg.PulledAt != nil {
					pulled++
				}
			}
		}
	}
	t.Logf("%d tags of 128 characters are %d objects; the largest is %d bytes as stored (%.0f%% of 64 KiB)",
		n, objects, largest, 100*float64(largest)/objectLimit)
	if largest >= objectLimit {
		t.Fatalf("an object holding tags is %d bytes, over %d", largest, objectLimit)
	}
	if pulled != n {
		t.Errorf("%d tags in the shards have a pull time, want %d", pulled, n)
	}
	all, err := s.List(ctx, "app", 0, "")
	if err != nil || len(all) != n {
		t.Fatalf("listed %d tags (%v), want %d", len(all), err, n)
	}
}
