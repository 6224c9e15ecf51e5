package kube_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob/memblob"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// createQuotaRepository makes the Repository of path with quota q.
func createQuotaRepository(t *testing.T, reg *v1.Registry, path string, q v1.RepositoryQuota) *v1.Repository {
	t.Helper()
	repo := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, path), Namespace: reg.Namespace},
		Spec:       v1.RepositorySpec{Registry: reg.Name, Name: path, Quota: &q},
	}
	if err := env.Client.Create(context.Background(), repo); err != nil {
		t.Fatal(err)
	}
	return repo
}

func liveRepository(t testing.TB, reg *v1.Registry, path string) *v1.Repository {
	t.Helper()
	var repo v1.Repository
	if err := env.Client.Get(context.Background(), keyIn(reg, v1.RepositoryObjectName(reg.Name, path)), &repo); err != nil {
		t.Fatal(err)
	}
	return &repo
}

// TestQuota: spec.quota.tags refuses a new tag past it and not a move;
// spec.quota.bytes refuses growth past it, counts a digest once, and lets
// a push that does not grow usage through a lowered quota.
func TestQuota(t *testing.T) {
	ctx := context.Background()
	type push struct {
		tag, content string
		size         int64
		want         string // "": allowed; else the DENIED detail it contains
		lowerTo      int64  // > 0: spec.quota.bytes is set to it before the push
	}
	bytes := func(n int64) *resource.Quantity { return resource.NewQuantity(n, resource.DecimalSI) }
	tests := []struct {
		name   string
		quota  v1.RepositoryQuota
		pushes []push
		bytes  int64 // status.bytes at the end
	}{
		{"tags", v1.RepositoryQuota{Tags: ptr.To[int32](2)}, []push{
			{tag: "a", content: "one", size: 10},
			{tag: "b", content: "two", size: 10},
			{tag: "c", content: "three", size: 10, want: `tag "c" would be tag 3 of repository app, over its quota of 2 tags (Repository `},
			{tag: "a", content: "three", size: 10}, // a move, not a new tag
		}, 20},
		{"bytes", v1.RepositoryQuota{Bytes: bytes(1000)}, []push{
			{tag: "a", content: "one", size: 600},
			{tag: "b", content: "one", size: 600}, // the same digest counts once
			{tag: "c", content: "two", size: 500, want: `tag "c" would take repository app to 1100 bytes, over its quota of 1k (1000 bytes; Repository `},
			{tag: "c", content: "two", size: 400}, // exactly the quota
			{tag: "d", content: "three", size: 1, want: "over its quota of 1k"},
			{tag: "b", content: "two", size: 400},  // one is still a's: no growth
			{tag: "a", content: "four", size: 100}, // one held by none now
		}, 500},
		{"lowered", v1.RepositoryQuota{Bytes: bytes(1000)}, []push{
			{tag: "a", content: "one", size: 800},
			{tag: "b", content: "one", size: 800, lowerTo: 500}, // no growth: allowed over quota
			{tag: "c", content: "two", size: 10, want: "would take repository app to 810 bytes, over its quota of 500"},
		}, 800},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, nil)
			created := createQuotaRepository(t, reg, "app", tc.quota)
			s := replica(t, reg, journal(t))
			for _, p := range tc.pushes {
				if p.lowerTo > 0 {
					update(t, &v1.Repository{}, client.ObjectKeyFromObject(created), func(o client.Object) {
						o.(*v1.Repository).Spec.Quota.Bytes = bytes(p.lowerTo)
					})
				}
				err := s.PutContent(ctx, "app", p.tag, desc(p.content), p.size)
				if p.want == "" {
					if err != nil {
						t.Fatalf("push %s -> %s (%d bytes): %v", p.tag, p.content, p.size, err)
					}
					continue
				}
				wantDenied(t, err, p.want)
			}
			if got := liveRepository(t, reg, "app").Status.Bytes; got != tc.bytes {
				t.Errorf("status.bytes %d, want %d", got, tc.bytes)
			}
		})
	}
}

// TestQuotaAcrossReplicas: three replicas, 60 concurrent pushes of distinct
// content of 1,000 bytes each into a repository with room for 10,000: exactly
// 10 succeed, usage is exactly the quota, and status, journal and the
// successful pushes agree.
func TestQuotaAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	createQuotaRepository(t, reg, "app", v1.RepositoryQuota{Bytes: resource.NewQuantity(10_000, resource.DecimalSI)})
	j := journal(t)
	replicas := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}
	const n, each = 60, 1000
	var won, denied atomic.Int64
	var accepted sync.Map
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			tag := fmt.Sprintf("t%02d", i)
			err := replicas[i%3].PutContent(ctx, "app", tag, desc(tag), each)
			var e *errcode.Error
			switch {
			case err == nil:
				won.Add(1)
				accepted.Store(tag, desc(tag).Digest.String())
			case errors.As(err, &e) && e.Code == errcode.Denied:
				denied.Add(1)
			default:
				t.Errorf("Put: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d pushes of %d bytes against a quota of 10,000 from 3 replicas: %d accepted, %d refused", n, each, won.Load(), denied.Load())
	if won.Load() != 10 || denied.Load() != n-10 {
		t.Fatalf("%d accepted, %d refused; want 10 and %d", won.Load(), denied.Load(), n-10)
	}
	repo := liveRepository(t, reg, "app")
	if repo.Status.Bytes != 10_000 || repo.Status.TagCount != 10 {
		t.Errorf("status.bytes %d, tagCount %d; want 10000 and 10", repo.Status.Bytes, repo.Status.TagCount)
	}
	want := map[string]string{}
	accepted.Range(func(k, v any) bool { want[k.(string)] = v.(string); return true })
	if got := statusTags(t, reg, "app"); !equalMaps(got, want) {
		t.Errorf("status has %v, the accepted pushes %v", got, want)
	}
	if got := journalTags(t, j, "app"); !equalMaps(got, want) {
		t.Errorf("journal has %v, the accepted pushes %v", got, want)
	}
	// Raising the quota makes room at once, without a restart.
	update(t, &v1.Repository{}, client.ObjectKeyFromObject(repo), func(o client.Object) {
		o.(*v1.Repository).Spec.Quota.Bytes = resource.NewQuantity(11_000, resource.DecimalSI)
	})
	if err := replicas[1].PutContent(ctx, "app", "more", desc("more"), each); err != nil {
		t.Errorf("push after the quota was raised: %v", err)
	}
}

// TestContentSizeThroughServer: what registryd records for a tag pushed
// over HTTP is the manifest's bytes plus its blobs', and for an index its
// children's content too.
func TestContentSizeThroughServer(t *testing.T) {
	reg := newRegistry(t, nil)
	bucket := memblob.OpenBucket(nil)
	t.Cleanup(func() { bucket.Close() })
	s := replica(t, reg, tags.NewBucket(bucket))
	srv := httptest.NewServer(server.New(bucket, s, &server.Options{Secret: []byte("shared"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)

	config := pushBlob(t, srv.URL, "app", []byte("{}"))
	image := func(layerBytes int) ([]byte, int64) {
		layer := make([]byte, layerBytes)
		_, _ = rand.Read(layer)
		l := pushBlob(t, srv.URL, "app", layer)
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
			ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, config, ocispec.MediaTypeImageLayer, l, layerBytes))
		return body, int64(len(body) + 2 + layerBytes)
	}
	a, contentA := image(1000)
	b, contentB := image(3000)
	put := func(ref, mediaType string, body []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/app/manifests/"+ref, bytes.NewReader(body))
		req.Header.Set("Content-Type", mediaType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT %s: %s", ref, resp.Status)
		}
	}
	put("a", ocispec.MediaTypeImageManifest, a)
	put(digest.FromBytes(b).String(), ocispec.MediaTypeImageManifest, b)
	index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d},{"mediaType":%q,"digest":%q,"size":%d}]}`,
		ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, digest.FromBytes(a), len(a), ocispec.MediaTypeImageManifest, digest.FromBytes(b), len(b)))
	put("multi", ocispec.MediaTypeImageIndex, index)

	repo := liveRepository(t, reg, "app")
	want := map[string]int64{"a": contentA, "multi": int64(len(index)) + contentA + contentB}
	for tag, size := range want {
		if got, _ := repo.Status.FindTag(tag); got.ContentSize != size {
			t.Errorf("tag %s: contentSize %d, want %d", tag, got.ContentSize, size)
		}
	}
	if repo.Status.Bytes != want["a"]+want["multi"] {
		t.Errorf("status.bytes %d, want %d", repo.Status.Bytes, want["a"]+want["multi"])
	}
}
