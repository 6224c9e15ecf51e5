package storage

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// addRepositories makes each name a repository, as a layer link does.
func addRepositories(t *testing.T, b *blob.Bucket, names []string) {
	t.Helper()
	for _, n := range names {
		if err := b.WriteAll(context.Background(), RepoPrefix(n)+"_layers/sha256/x", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRepositoriesPage: pages of the bucket catalog come out in lexical
// order from any starting point, also where the bucket's own order is
// not lexical ("repos/a-b/" lists before "repos/a/", but "a" < "a-b" <
// "a/b"), for nested repositories, namespaces that are no repository,
// and a repository with more nested ones than a page (digits list before
// its "_" children).
func TestRepositoriesPage(t *testing.T) {
	ctx := context.Background()
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	names := []string{"a", "a-b", "a.c", "a/b", "a/b-c", "a/b/c", "a0", "ab", "b",
		"d", "d/0", "d/1", "d/2", "d/3", "ns/app", "ns/app-x", "ns-x/app", "z9/1"}
	addRepositories(t, b, names)
	want := slices.Clone(names)
	slices.Sort(want)
	s := New(b)
	all, err := s.Repositories(ctx)
	if err != nil || !slices.Equal(all, want) {
		t.Fatalf("Repositories: %v (%v), want %v", all, err, want)
	}
	starts := append([]string{"", "a-a", "a/", "c", "zz"}, want...)
	for _, n := range []int{1, 2, 3, 5, len(want)} {
		for _, last := range starts {
			var got []string
			for from := last; ; {
				page, err := s.RepositoriesPage(ctx, from, n)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > n {
					t.Fatalf("n=%d after %q: %d names", n, from, len(page))
				}
				got = append(got, page...)
				if len(page) < n {
					break
				}
				from = page[len(page)-1]
			}
			var exp []string
			for _, w := range want {
				if w > last {
					exp = append(exp, w)
				}
			}
			if !slices.Equal(got, exp) {
				t.Errorf("pages of %d after %q: %v, want %v", n, last, got, exp)
			}
		}
	}
}

// TestRepositoriesPageCost: on S3, a page far into a catalog of 1,000
// repositories lists a few directories from `last` on instead of walking
// every repository before it.
func TestRepositoriesPageCost(t *testing.T) {
	srv := storageservers.Start(t, storageservers.S3)
	var lists atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: srv.Addr})
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && resp.Request.URL.Query().Has("list-type") {
			lists.Add(1)
		}
		return nil
	}
	proxy := httptest.NewServer(rp)
	t.Cleanup(proxy.Close)
	ctx := context.Background()
	b, err := bucket.Open(ctx, strings.Replace(srv.URL, srv.Addr, strings.TrimPrefix(proxy.URL, "http://"), 1), bucket.Options{Env: srv.Env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var names []string
	for i := range 1000 {
		names = append(names, fmt.Sprintf("team%d/app%03d", i%2, i/2))
	}
	addRepositories(t, b, names)
	slices.Sort(names)
	s := New(b)
	lists.Store(0)
	all, err := s.Repositories(ctx)
	if err != nil || !slices.Equal(all, names) {
		t.Fatalf("Repositories: %d names (%v)", len(all), err)
	}
	walk := lists.Swap(0)
	page, err := s.RepositoriesPage(ctx, names[989], 10)
	if err != nil || !slices.Equal(page, names[990:]) {
		t.Fatalf("page after %s: %v (%v)", names[989], page, err)
	}
	paged := lists.Swap(0)
	first, err := s.RepositoriesPage(ctx, "", 10)
	if err != nil || !slices.Equal(first, names[:10]) {
		t.Fatalf("first page: %v (%v)", first, err)
	}
	t.Logf("list requests: %d for the whole catalog, %d for the last page of 10, %d for the first", walk, paged, lists.Load())
	if paged > 20 || lists.Load() > 20 {
		t.Errorf("a page of 10 cost %d and %d list requests, the whole catalog %d: not proportional to the page", paged, lists.Load(), walk)
	}
}
