package kube_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// BenchmarkPushTags pushes distinct tags into one repository's status from
// goroutines spread over three replicas, as concurrent CI jobs would; with
// a tag limit, what the split repository's usage reservations cost.
func BenchmarkPushTags(b *testing.B) {
	// 12 writers, and 48 as a CI fleet's worth: larger group commits.
	for _, tc := range []struct {
		writers int
		limit   int32
	}{{12, 0}, {48, 0}, {96, 0}, {48, 1 << 20}} {
		name := fmt.Sprintf("writers=%d", tc.writers)
		if tc.limit > 0 {
			name += "/limit"
		}
		writers := tc.writers
		b.Run(name, func(b *testing.B) {
			reg := newRegistry(b, func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = tc.limit })
			j := journal(b)
			var calls atomic.Int64
			cfg := registrydConfig(&calls)
			replicas := []*kube.Store{replicaWith(b, cfg, reg, j), replicaWith(b, cfg, reg, j), replicaWith(b, cfg, reg, j)}
			ctx := context.Background()
			b.ResetTimer()
			calls0, start := calls.Load(), time.Now()
			pushers(b, writers, func(w int, i int64) error {
				return replicas[w%3].Put(ctx, "bench/app", fmt.Sprintf("t%07d", i), desc(fmt.Sprint(i)))
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tags/s")
			conflicts := 0.0
			for _, s := range replicas {
				conflicts += s.Conflicts()
			}
			b.ReportMetric(conflicts/float64(b.N), "conflicts/tag")
			b.ReportMetric(float64(calls.Load()-calls0)/float64(b.N), "api-calls/tag")
		})
	}
}

// BenchmarkNewRepositories pushes one tag into each of b.N new repositories
// from 8 goroutines through one replica, as a CI fleet copying images into
// fresh repositories would: each push creates its Repository.
func BenchmarkNewRepositories(b *testing.B) {
	reg := newRegistry(b, nil)
	var calls atomic.Int64
	s := replicaWith(b, registrydConfig(&calls), reg, journal(b))
	ctx := context.Background()
	b.ResetTimer()
	calls0, start := calls.Load(), time.Now()
	pushers(b, 8, func(_ int, i int64) error {
		return s.Put(ctx, fmt.Sprintf("bench/new%07d", i), "v1", desc(fmt.Sprint(i)))
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "repositories/s")
	b.ReportMetric(float64(calls.Load()-calls0)/float64(b.N), "api-calls/repository")
}

// pushers runs push for 1..b.N from n goroutines (w: the goroutine).
func pushers(b *testing.B, n int, push func(w int, i int64) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if err := push(w, i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// registrydConfig is the test API server's config with the rate limit
// registryd gives the store, counting every request in calls.
func registrydConfig(calls *atomic.Int64) *rest.Config {
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = kube.DefaultQPS, kube.DefaultBurst
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			return rt.RoundTrip(r)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkManyTags reads a repository of 10,000 tags, split over
// TagShards: the first page of its tag list, the whole list, and one tag,
// all from the informer cache.
func BenchmarkManyTags(b *testing.B) {
	reg := newRegistry(b, nil)
	s := replica(b, reg, journal(b))
	ctx := context.Background()
	const limit = 10_000
	fill(b, s, limit)
	cases := []struct {
		name string
		run  func() error
	}{
		{"list-first-100", func() error { _, err := s.List(ctx, "app", 100, ""); return err }},
		{"list-all", func() error { _, err := s.List(ctx, "app", 0, ""); return err }},
		{"get-one", func() error { _, err := s.Get(ctx, "app", fmt.Sprintf("t%04d", limit/2)); return err }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			before := s.LiveReads()
			for b.Loop() {
				if err := c.run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(s.LiveReads()-before, "api-calls")
		})
	}
}

func fill(b *testing.B, s tags.Store, n int) {
	var wg sync.WaitGroup
	const writers = 128 // large group commits: the object grows with each
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				if err := s.Put(context.Background(), "app", fmt.Sprintf("t%04d", i), desc(fmt.Sprint(i))); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Reads below must come from the cache: wait until it has the last write.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if l, _ := s.List(context.Background(), "app", 0, ""); len(l) == n {
			return
		}
	}
	b.Fatalf("repository never reached %d tags", n)
}

// BenchmarkCatalog reads catalog pages of a Registry with 1,000, then
// 10,000 repositories: a page of 100 must cost the same in both, a page of
// 1,000 about ten times as much, and no page an API call.
func BenchmarkCatalog(b *testing.B) {
	reg := newRegistry(b, nil)
	s := replica(b, reg, journal(b))
	ctx := context.Background()
	created := 0
	for _, total := range []int{1000, 10000} {
		createRepositories(b, reg, created, total)
		created = total
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if all, _ := s.Repositories(ctx); len(all) == total {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the catalog never reached %d repositories", total)
			}
		}
		for _, n := range []int{100, 1000} {
			if n > total/2 {
				continue // the page starts in the middle
			}
			b.Run(fmt.Sprintf("page-%d-of-%d", n, total), func(b *testing.B) {
				before := s.LiveReads()
				last := fmt.Sprintf("bench/r%05d", total/2) // a page from the middle
				for b.Loop() {
					if page, _, err := s.RepositoriesPage(ctx, last, n); err != nil || len(page) != n {
						b.Fatalf("page of %d (%v)", len(page), err)
					}
				}
				b.ReportMetric(s.LiveReads()-before, "api-calls")
			})
		}
	}
}

// createRepositories creates bench/r<from>..bench/r<to-1> in reg's namespace.
func createRepositories(b *testing.B, reg *v1.Registry, from, to int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	next.Store(int64(from))
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(to); i = next.Add(1) - 1 {
				path := fmt.Sprintf("bench/r%05d", i)
				if err := env.Client.Create(context.Background(), &v1.Repository{
					ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, path), Namespace: reg.Namespace},
					Spec:       v1.RepositorySpec{Registry: reg.Name, Name: path}}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkStatusUpdateBySize is one Repository status update (one tag
// moved) as the object grows: the cost a tag write pays for the tags
// already in its object, which decides how many tags one object should
// hold when a repository's tags are split over several. Tags are 24
// characters, with a content size and a pull time, as CI tags are.
func BenchmarkStatusUpdateBySize(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{10, 100, 300, 1000, 1500, 2500} {
		b.Run(fmt.Sprintf("tags=%d", n), func(b *testing.B) {
			reg := newRegistry(b, func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 1 << 20 })
			repo := &v1.Repository{
				ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, "app"), Namespace: reg.Namespace},
				Spec:       v1.RepositorySpec{Registry: reg.Name, Name: "app"},
			}
			if err := env.Client.Create(ctx, repo); err != nil {
				b.Fatal(err)
			}
			now := metav1.Now()
			for i := range n {
				name := fmt.Sprintf("ci-%020d", i)
				repo.Status.SetTag(v1.TagStatus{Name: name, Digest: desc(name).Digest.String(), MediaType: desc(name).MediaType,
					Size: 1234, ContentSize: 123456789, PushedAt: now, PulledAt: &now})
			}
			repo.Status.Recount()
			if err := env.Client.Status().Update(ctx, repo); err != nil {
				b.Fatal(err)
			}
			raw, err := rawRepository(ctx, reg, repo.Name)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; b.Loop(); i++ {
				t := repo.Status.Tags[i%n]
				t.Digest = desc(fmt.Sprint("moved-", i)).Digest.String()
				repo.Status.SetTag(t)
				if err := env.Client.Status().Update(ctx, repo); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/update")
			b.ReportMetric(float64(len(raw))/1024, "KiB/object")
		})
	}
}
