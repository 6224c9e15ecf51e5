package kube_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestUntagDigest removes every tag of a digest at once, on live state, and
// from the journal after status.
func TestUntagDigest(t *testing.T) {
	one, two := desc("one").Digest, desc("two").Digest
	tests := []struct {
		name      string
		immutable bool
		// setup runs with x's cache frozen when frozen is set.
		setup       func(t *testing.T, x, y *kube.Store)
		frozen      bool
		wantRemoved []string
		wantDenied  bool
		want        map[string]string
	}{
		{"removes every tag of the digest", false, func(t *testing.T, x, _ *kube.Store) {
			mustPut(t, x, "app", "a", "one")
			mustPut(t, x, "app", "b", "two")
			mustPut(t, x, "app", "c", "one")
		}, false, []string{"a", "c"}, false, map[string]string{"b": two.String()}},
		{"sees a tag another replica just pushed", false, func(t *testing.T, x, y *kube.Store) {
			mustPut(t, y, "app", "b", "two")
			cachedSees(t, x, "app", "b", two.String())
		}, true, []string{"a"}, false, map[string]string{"b": two.String()}},
		{"no tag: nothing removed", false, func(t *testing.T, x, _ *kube.Store) {
			mustPut(t, x, "app", "b", "two")
		}, false, nil, false, map[string]string{"b": two.String()}},
		{"immutable tags are not removed", true, func(t *testing.T, x, _ *kube.Store) {
			mustPut(t, x, "app", "a", "one")
		}, false, nil, true, map[string]string{"a": one.String()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			reg := newRegistry(t, nil)
			j := journal(t)
			x, gate := frozenReplica(t, reg, j)
			y := replica(t, reg, j)
			if tc.immutable {
				createRepository(t, reg, "app", ".*")
			}
			tc.setup(t, x, y)
			if tc.frozen {
				gate.freeze()
				mustPut(t, y, "app", "a", "one") // x's cache does not have it
			}
			removed, err := x.UntagDigest(ctx, "app", one)
			if tc.wantDenied {
				wantDenied(t, err, `tag "a" is immutable (rule ".*" of Repository main.app-`)
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(removed, tc.wantRemoved) {
				t.Errorf("removed %v, want %v", removed, tc.wantRemoved)
			}
			gate.thaw()
			if got := statusTags(t, reg, "app"); !equalMaps(got, tc.want) {
				t.Errorf("status %v, want %v", got, tc.want)
			}
			if got := journalTags(t, j, "app"); !equalMaps(got, tc.want) {
				t.Errorf("journal %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("unknown repository", func(t *testing.T) {
		s := replica(t, newRegistry(t, nil), journal(t))
		if removed, err := s.UntagDigest(context.Background(), "nothing", one); err != nil || removed != nil {
			t.Fatalf("UntagDigest = %v, %v", removed, err)
		}
	})
}

// TestRepositoryExists answers from the cache, and live on a miss, so a
// Repository created a moment ago counts at once.
func TestRepositoryExists(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	s := replica(t, reg, journal(t))
	if ok, err := s.RepositoryExists(ctx, "app"); err != nil || ok {
		t.Fatalf("before: %v, %v", ok, err)
	}
	createRepository(t, reg, "app")
	before := s.LiveReads()
	if ok, err := s.RepositoryExists(ctx, "app"); err != nil || !ok {
		t.Fatalf("just created: %v, %v", ok, err)
	}
	eventually(t, func() bool {
		before = s.LiveReads()
		ok, err := s.RepositoryExists(ctx, "app")
		return err == nil && ok && s.LiveReads() == before
	})
	var _ tags.PushChecker = s
}

// TestStartsWithoutAPIServer: the store is built while the API server is
// away, answers 503 and is not ready; once the API server answers, it syncs
// and serves, with no restart.
func TestStartsWithoutAPIServer(t *testing.T) {
	reg := newRegistry(t, nil)
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testutil.NewSwitchProxy(t, u.Host)
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = "https://" + proxy.Addr()

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	start := time.Now()
	s, err := kube.New(ctx, cfg, kube.Options{Namespace: reg.Namespace, Registry: reg.Name, Journal: journal(t)})
	if err != nil {
		t.Fatalf("New without an API server: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("New waited %v for an API server that is away", d)
	}
	time.Sleep(time.Second) // a few failed list attempts
	if s.Ready() == nil {
		t.Fatal("ready without an API server")
	}
	t.Logf("not ready: %v", s.Ready())
	for name, err := range map[string]error{
		"Put": s.Put(ctx, "app", "v1", desc("one")),
		"Get": func() error { _, err := s.Get(ctx, "app", "v1"); return err }(),
	} {
		var e *errcode.Error
		if !errors.As(err, &e) || e.Code != errcode.Unavailable || e.RetryAfter == 0 {
			t.Errorf("%s without an API server = %v, want UNAVAILABLE with Retry-After", name, err)
		}
	}

	proxy.On()
	eventually(t, func() bool { return s.Ready() == nil })
	t.Logf("ready %v after the API server came", time.Since(start))
	mustPut(t, s, "app", "v1", "one")
	if d, err := s.Get(ctx, "app", "v1"); err != nil || d.Digest != desc("one").Digest {
		t.Fatalf("Get after the API server came: %v, %v", d.Digest, err)
	}
}

// TestCatalogFollowsRepositories: the catalog pages through exactly this
// Registry's Repositories that are not being deleted, as they are created
// and deleted through the API server, with no API call of its own.
func TestCatalogFollowsRepositories(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	other := &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: reg.Namespace}, Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}
	if err := env.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	s := replica(t, reg, journal(t))
	const n = 300
	want := make([]string, 0, n)
	create := func(registry, path string) error {
		return env.Client.Create(ctx, &v1.Repository{
			ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(registry, path), Namespace: reg.Namespace},
			Spec:       v1.RepositorySpec{Registry: registry, Name: path}})
	}
	errs := make(chan error, n+1)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		path := fmt.Sprintf("team%d/app-%03d", i%7, i)
		want = append(want, path)
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); errs <- create(reg.Name, path); <-sem }()
	}
	errs <- create("other", "elsewhere") // another Registry's: not in this catalog
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	pages := func(size int) []string {
		var got []string
		last := ""
		for {
			page, more, err := s.RepositoriesPage(ctx, last, size)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, page...)
			if !more {
				return got
			}
			last = page[len(page)-1]
		}
	}
	before := s.LiveReads()
	eventually(t, func() bool { return slices.Equal(pages(7), want) })

	// Deleting: one held by a finalizer (being deleted) and 50 gone.
	held := &v1.Repository{}
	if err := env.Client.Get(ctx, keyIn(reg, v1.RepositoryObjectName(reg.Name, want[0])), held); err != nil {
		t.Fatal(err)
	}
	held.Finalizers = append(held.Finalizers, "stevedore.dev/test-hold")
	if err := env.Client.Update(ctx, held); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		held.Finalizers = nil
		_ = env.Client.Update(context.Background(), held)
	})
	for _, p := range want[:51] {
		if err := env.Client.Delete(ctx, &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, p), Namespace: reg.Namespace}}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() bool { return slices.Equal(pages(50), want[51:]) })
	if all, err := s.Repositories(ctx); err != nil || !slices.Equal(all, want[51:]) {
		t.Fatalf("Repositories: %d paths (%v), want %d", len(all), err, len(want)-51)
	}
	if calls := s.LiveReads() - before; calls != 0 {
		t.Fatalf("paging the catalog made %v API calls", calls)
	}
}
