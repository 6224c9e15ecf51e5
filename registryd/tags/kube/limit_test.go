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

// etcdSafeBytes is the size a Repository object must stay under: etcd refuses
// requests over 1.5 MiB, and an object near it makes every watch event heavy.
const etcdSafeBytes = 1 << 20

// TestDefaultTagLimitFitsEtcd fills a repository to the Registry's default
// tag limit with the longest tag names the spec allows, every field of a
// tag set (a content size of 13 digits, a recorded pull), and measures the
// object the API server stores (managed fields included).
func TestDefaultTagLimitFitsEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a repository to its tag limit")
	}
	ctx := context.Background()
	reg := newRegistry(t, nil)
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reg), reg); err != nil {
		t.Fatal(err)
	}
	limit := int(reg.Spec.Limits.MaxTagsPerRepository)
	s := replica(t, reg, journal(t))

	const workers = 128
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < limit; i += workers {
				tag := fmt.Sprintf("%05d-%s", i, strings.Repeat("x", 122)) // 128 characters, the spec's maximum
				// A content size of 1 TiB: as many digits as any real one.
				if err := s.PutContent(ctx, "app", tag, desc(tag), 1<<40); err != nil {
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
	if err := s.Put(ctx, "app", "one-too-many", desc("x")); err == nil {
		t.Fatalf("tag %d accepted past the limit of %d", limit+1, limit)
	}
	// Every tag pulled: each holds a pulledAt too.
	for i := range limit {
		s.RecordPull("app", fmt.Sprintf("%05d-%s", i, strings.Repeat("x", 122)))
	}
	s.FlushPulls(ctx)

	raw, err := rawRepository(ctx, reg, v1.RepositoryObjectName(reg.Name, "app"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a Repository with %d tags of 128 characters is %d bytes as stored: %d bytes a tag; limit %d keeps it %.0f%% of 1 MiB",
		limit, len(raw), len(raw)/limit, limit, 100*float64(len(raw))/etcdSafeBytes)
	if len(raw) >= etcdSafeBytes {
		t.Fatalf("a Repository at the default tag limit (%d) is %d bytes, over %d", limit, len(raw), etcdSafeBytes)
	}
}
