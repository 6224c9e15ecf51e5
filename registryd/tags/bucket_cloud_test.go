package tags_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// countingBody counts the bytes of listing responses that pass through.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestBucketListStartsAfter: on S3 and GCS, a page of tags that starts far
// into a repository asks the backend to start there (StartAfter,
// StartOffset) instead of listing every tag before it, and still returns
// exactly the tags after `last`, with a bucket prefix too.
func TestBucketListStartsAfter(t *testing.T) {
	for _, kind := range []storageservers.Kind{storageservers.S3, storageservers.GCS} {
		t.Run(string(kind), func(t *testing.T) {
			srv := storageservers.Start(t, kind)
			for k, v := range srv.Env {
				t.Setenv(k, v)
			}
			var listed atomic.Int64
			rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: srv.Addr})
			rp.ModifyResponse = func(resp *http.Response) error {
				q := resp.Request.URL.Query()
				if resp.Request.Method == http.MethodGet && (q.Has("list-type") || q.Has("prefix")) {
					resp.Body = countingBody{resp.Body, &listed}
				}
				return nil
			}
			proxy := httptest.NewServer(rp)
			t.Cleanup(proxy.Close)
			host := strings.TrimPrefix(proxy.URL, "http://")
			u := strings.Replace(srv.URL, srv.Addr, host, 1)
			if kind == storageservers.GCS {
				t.Setenv("STORAGE_EMULATOR_HOST", host)
			}
			ctx := context.Background()
			b, err := bucket.Open(ctx, u, bucket.Options{Prefix: "team/"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			s := tags.NewBucketWith(b, tags.BucketOptions{ListStart: bucket.ListStart})
			const n = 300
			for i := range n {
				if err := s.Put(ctx, "app", fmt.Sprintf("t%04d", i), testDescriptor(i)); err != nil {
					t.Fatal(err)
				}
			}
			listed.Store(0)
			all, err := s.List(ctx, "app", 0, "")
			if err != nil || len(all) != n {
				t.Fatalf("all tags: %d, %v", len(all), err)
			}
			full := listed.Swap(0)
			tail, err := s.List(ctx, "app", 0, "t0289")
			if err != nil {
				t.Fatal(err)
			}
			if len(tail) != 10 || tail[0] != "t0290" || tail[9] != "t0299" {
				t.Fatalf("after t0289: %v", tail)
			}
			part := listed.Load()
			t.Logf("listing bytes: %d from the start, %d after t0289", full, part)
			if full == 0 || part*5 > full {
				t.Errorf("a page after t0289 listed %d bytes, the whole list %d: the backend listed from the start", part, full)
			}
		})
	}
}

func testDescriptor(i int) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromString(fmt.Sprint(i)),
		Size:      int64(100 + i),
	}
}
