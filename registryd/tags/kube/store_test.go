package kube_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob/memblob"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
	"github.com/stevedore-dev/stevedore/registryd/tags/tagstoretest"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard())
	os.Exit(testenv.Main(m, func(e *testenv.Env) (func(), error) { env = e; return nil, nil }))
}

// newRegistry makes a namespace and a Registry in it.
func newRegistry(t testing.TB, mutate func(*v1.Registry)) *v1.Registry {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + rand.String(8)}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	reg := &v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns.Name},
		Spec:       v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}},
	}
	if mutate != nil {
		mutate(reg)
	}
	if err := env.Client.Create(ctx, reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// replica starts a store as one registryd replica of reg would.
func replica(t testing.TB, reg *v1.Registry, journal tags.Store) *kube.Store {
	t.Helper()
	return replicaWith(t, env.Config, reg, journal)
}

// replicaWith is replica with its own API client config, and options
// changed by mods.
func replicaWith(t testing.TB, cfg *rest.Config, reg *v1.Registry, journal tags.Store, mods ...func(*kube.Options)) *kube.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var logger *slog.Logger
	if _, ok := t.(*testing.B); ok {
		logger = slog.New(slog.DiscardHandler) // between a benchmark's name and its figures
	}
	opts := kube.Options{Logger: logger, Namespace: reg.Namespace, Registry: reg.Name, Journal: journal}
	for _, mod := range mods {
		mod(&opts)
	}
	s, err := kube.New(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, s)
	return s
}

func journal(t testing.TB) tags.Store {
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	return tags.NewBucket(b)
}

func desc(s string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(s), Size: int64(len(s))}
}

// TestStoreBehaviour is the table every tag store passes.
func TestStoreBehaviour(t *testing.T) {
	tagstoretest.Run(t, func(t *testing.T) tags.Store {
		return replica(t, newRegistry(t, nil), journal(t))
	})
}

// TestJournalAndStatus checks a push lands in the journal and in the status
// of an auto-created Repository with a deterministic name.
func TestJournalAndStatus(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	j := journal(t)
	s := replica(t, reg, j)
	if err := s.Put(ctx, "team/app", "v1", desc("one")); err != nil {
		t.Fatal(err)
	}
	if got, err := j.Get(ctx, "team/app", "v1"); err != nil || got.Digest != desc("one").Digest {
		t.Fatalf("journal holds %v, %v", got, err)
	}
	var repo v1.Repository
	if err := env.Client.Get(ctx, keyIn(reg, v1.RepositoryObjectName("main", "team/app")), &repo); err != nil {
		t.Fatalf("auto-created Repository: %v", err)
	}
	if repo.Spec.Name != "team/app" || repo.Status.TagCount != 1 || repo.Status.Tags[0].Digest != desc("one").Digest.String() {
		t.Fatalf("Repository %+v / %+v", repo.Spec, repo.Status)
	} // Owned by its Registry (deleting the Registry deletes it) and with no
	// finalizer (a Retain Repository needs no operator to go).
	if refs := repo.OwnerReferences; len(refs) != 1 || refs[0].UID != reg.UID || refs[0].Kind != "Registry" || refs[0].Name != reg.Name {
		t.Errorf("owner references %+v, want the Registry %s (%s)", refs, reg.Name, reg.UID)
	}
	if len(repo.Finalizers) > 0 {
		t.Errorf("finalizers %v, want none", repo.Finalizers)
	}
}

// TestPushClearsTombstone: a repository deleted on purpose and pushed to
// again is importable again.
func TestPushClearsTombstone(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	j := tags.NewBucket(b)
	if err := j.MarkDeleted(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	s := replica(t, newRegistry(t, nil), j)
	mustPut(t, s, "app", "v1", "one")
	if deleted, err := j.IsDeleted(ctx, "app"); err != nil || deleted {
		t.Fatalf("tombstone still there after the push re-created the repository (%v)", err)
	}
}

// TestRegistryRules checks immutable tags, the tag limit and auto-creation off.
func TestRegistryRules(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		mutate  func(*v1.Registry)
		setup   func(t *testing.T, reg *v1.Registry, s tags.Store)
		push    string
		code    errcode.Code
		message string
	}{
		{"immutable tag", nil, func(t *testing.T, reg *v1.Registry, s tags.Store) {
			createRepository(t, reg, "app", ".*")
			mustPut(t, s, "app", "v1", "one")
		}, "v1", errcode.Denied, `tag "v1" is immutable (rule ".*" of Repository main.app-`},
		{"tag limit", func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 2 }, func(t *testing.T, reg *v1.Registry, s tags.Store) {
			mustPut(t, s, "app", "a", "one")
			mustPut(t, s, "app", "b", "two")
		}, "c", errcode.Denied, "holds 2 tags, the limit of Registry main (spec.limits.maxTagsPerRepository)"},
		{"auto-creation off", func(r *v1.Registry) { r.Spec.AutoCreateRepositories = ptr.To(false) }, nil,
			"v1", errcode.NameUnknown, "spec.autoCreateRepositories: false"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, tc.mutate)
			s := replica(t, reg, journal(t))
			if tc.setup != nil {
				tc.setup(t, reg, s)
			}
			err := s.Put(ctx, "app", tc.push, desc("other"))
			var e *errcode.Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(fmt.Sprint(e.Detail), tc.message) {
				t.Fatalf("Put = %v, want %s containing %q", err, tc.code.Name, tc.message)
			}
		})
	}
	t.Run("immutable tag may be pushed again unchanged", func(t *testing.T) {
		reg := newRegistry(t, nil)
		s := replica(t, reg, journal(t))
		createRepository(t, reg, "app", ".*")
		mustPut(t, s, "app", "v1", "one")
		mustPut(t, s, "app", "v1", "one")
	})
}

func createRepository(t *testing.T, reg *v1.Registry, path string, immutable ...string) {
	t.Helper()
	repo := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, path), Namespace: reg.Namespace},
		Spec:       v1.RepositorySpec{Registry: reg.Name, Name: path, ImmutableTags: immutable},
	}
	if err := env.Client.Create(context.Background(), repo); err != nil {
		t.Fatal(err)
	}
}

func mustPut(t *testing.T, s tags.Store, path, tag, content string) {
	t.Helper()
	if err := s.Put(context.Background(), path, tag, desc(content)); err != nil {
		t.Fatalf("Put %s:%s: %v", path, tag, err)
	}
}

// TestReplicasPushConcurrently runs three registryd servers for one Registry
// over one bucket; 12 goroutines spread over them push 300 distinct tags to
// one repository, and all of them move one shared tag.
func TestReplicasPushConcurrently(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	bucket := memblob.OpenBucket(nil)
	t.Cleanup(func() { bucket.Close() })
	j := tags.NewBucket(bucket)
	stores := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}
	urls := make([]string, len(stores))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, s := range stores {
		srv := httptest.NewServer(server.New(bucket, s, &server.Options{Secret: []byte("shared"), Logger: quiet}))
		t.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	config := pushBlob(t, urls[0], "team/app", []byte("{}"))
	manifest := func(note string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[],"annotations":{"note":%q}}`,
			ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, config, note))
	}

	const tagsTotal, workers = 300, 12
	var wg sync.WaitGroup
	errs := make(chan error, tagsTotal+workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := urls[w%len(urls)]
			for i := w; i < tagsTotal; i += workers {
				if err := putManifest(url, "team/app", fmt.Sprintf("t%03d", i), manifest(fmt.Sprint(i))); err != nil {
					errs <- err
				}
			}
			if err := putManifest(url, "team/app", "latest", manifest(fmt.Sprint("latest-", w))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var repo v1.Repository
	if err := env.Client.Get(ctx, keyIn(reg, v1.RepositoryObjectName("main", "team/app")), &repo); err != nil {
		t.Fatal(err)
	}
	// 301 tags are past one object: they are in the Repository's TagShards.
	tree := tagTree(t, &repo)
	if n := len(tree.All()); n != tagsTotal+1 || !repo.Status.TagsSplit {
		t.Fatalf("status and shards hold %d tags (split %v), want %d", n, repo.Status.TagsSplit, tagsTotal+1)
	}
	for i := range tagsTotal {
		tag := fmt.Sprintf("t%03d", i)
		if got, ok := tree.Find(tag); !ok || got.Digest != digest.FromBytes(manifest(fmt.Sprint(i))).String() {
			t.Errorf("tag %s = %+v, %v", tag, got, ok)
		}
	}
	latest, _ := tree.Find("latest")
	written := false
	for w := range workers {
		written = written || latest.Digest == digest.FromBytes(manifest(fmt.Sprint("latest-", w))).String()
	}
	if !written {
		t.Fatalf("latest = %s, not one of the written digests", latest.Digest)
	}
	// Every replica serves it the same within a second.
	deadline := time.Now().Add(time.Second)
	for i, url := range urls {
		for {
			got, err := headManifest(url, "team/app", "latest")
			if err == nil && got == latest.Digest {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d serves latest as %q (%v), status says %s", i, got, err, latest.Digest)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// pushBlob uploads content monolithically and returns its digest.
func pushBlob(t *testing.T, base, repo string, content []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(content)
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("blob push: %s", resp.Status)
	}
	return d
}

func putManifest(base, repo, tag string, body []byte) error {
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("PUT %s:%s: %s %s", repo, tag, resp.Status, msg)
	}
	return nil
}

func headManifest(base, repo, tag string) (string, error) {
	req, _ := http.NewRequest(http.MethodHead, base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD %s:%s: %s", repo, tag, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

// TestReadsComeFromTheCache checks the pull path makes no API call once the
// cache has the tag, and a miss is answered by one live read.
func TestReadsComeFromTheCache(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	j := journal(t)
	writer, reader := replica(t, reg, j), replica(t, reg, j)
	mustPut(t, writer, "app", "v1", "one")

	// Right after another replica's push the reader may not have it cached:
	// it must still resolve (a live read at most).
	if _, err := reader.Get(ctx, "app", "v1"); err != nil {
		t.Fatalf("fresh tag from another replica: %v", err)
	}
	// Once cached, reads are free.
	eventually(t, func() bool {
		before := reader.LiveReads()
		_, err := reader.Get(ctx, "app", "v1")
		return err == nil && reader.LiveReads() == before
	})
	before := reader.LiveReads()
	for range 100 {
		if _, err := reader.Get(ctx, "app", "v1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := reader.LiveReads() - before; n != 0 {
		t.Fatalf("100 cached reads made %v API calls", n)
	}
}

func eventually(t testing.TB, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}

func keyIn(reg *v1.Registry, name string) client.ObjectKey {
	return client.ObjectKey{Namespace: reg.Namespace, Name: name}
}

// rawRepository is the Repository's JSON as the API server returns it.
func rawRepository(ctx context.Context, reg *v1.Registry, name string) ([]byte, error) {
	return rawObject(ctx, reg, "repositories", name)
}

// rawObject is an object of resource in reg's namespace as the API server stores it.
func rawObject(ctx context.Context, reg *v1.Registry, resource, name string) ([]byte, error) {
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	return cs.RESTClient().Get().AbsPath("/apis/stevedore.dev/v1alpha1/namespaces", reg.Namespace, resource, name).DoRaw(ctx)
}

// TestPushByDigestCreatesRepository: a manifest pushed by digest alone
// creates its Repository as a tag push does, so the repository is in the
// catalog; with auto-creation off the push is refused at its first blob,
// before anything is stored.
func TestPushByDigestCreatesRepository(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*v1.Registry)
		want   int
	}{
		{"auto-creation on", nil, http.StatusCreated},
		{"auto-creation off", func(r *v1.Registry) { r.Spec.AutoCreateRepositories = ptr.To(false) }, http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, tc.mutate)
			bucket := memblob.OpenBucket(nil)
			t.Cleanup(func() { bucket.Close() })
			store := replica(t, reg, tags.NewBucket(bucket))
			srv := httptest.NewServer(server.New(bucket, store, &server.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
			t.Cleanup(srv.Close)
			if tc.want != http.StatusCreated {
				resp, err := http.Post(srv.URL+"/v2/team/untagged/blobs/uploads/?digest="+digest.FromBytes([]byte("{}")).String(), "application/octet-stream", bytes.NewReader([]byte("{}")))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Fatalf("blob push to a repository that will not be created: %s, want %d", resp.Status, tc.want)
				}
				if ok, _ := bucket.Exists(context.Background(), "blobs/sha256/"+digest.FromBytes([]byte("{}")).Encoded()); ok {
					t.Fatal("the refused blob push stored the blob")
				}
				return
			}
			config := pushBlob(t, srv.URL, "team/untagged", []byte("{}"))
			body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[]}`,
				ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, config))
			req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/team/untagged/manifests/"+digest.FromBytes(body).String(), bytes.NewReader(body))
			req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("push by digest: %s, want %d", resp.Status, tc.want)
			}
			var repo v1.Repository
			err = env.Client.Get(context.Background(), keyIn(reg, v1.RepositoryObjectName(reg.Name, "team/untagged")), &repo)
			if created := err == nil; created != (tc.want == http.StatusCreated) {
				t.Fatalf("Repository created: %v (%v)", created, err)
			}
			if tc.want != http.StatusCreated {
				return
			}
			eventually(t, func() bool {
				names, err := store.Repositories(context.Background())
				return err == nil && slices.Contains(names, "team/untagged")
			})
		})
	}
}

// gatedJournal holds the first ClearDeleted until released. A push into a
// new repository calls it while creating the Repository, inside its status
// round, so a test can queue a second write behind a round in flight.
type gatedJournal struct {
	*tags.Bucket
	entered, release chan struct{}
	once             sync.Once
}

func (g *gatedJournal) ClearDeleted(ctx context.Context, repo string) error {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.release
	}
	return g.Bucket.ClearDeleted(ctx, repo)
}

// TestAbandonedPushIsNotApplied: a push whose client gives up while it
// waits behind another status update is dropped from the queue, not
// written after the client has been told it failed.
func TestAbandonedPushIsNotApplied(t *testing.T) {
	reg := newRegistry(t, nil)
	j := &gatedJournal{Bucket: journal(t).(*tags.Bucket), entered: make(chan struct{}), release: make(chan struct{})}
	s := replica(t, reg, j)
	first := make(chan error, 1)
	go func() { first <- s.Put(context.Background(), "app", "first", desc("one")) }()
	<-j.entered // the first round is in flight

	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() { queued <- s.Put(ctx, "app", "abandoned", desc("two")) }()
	time.Sleep(100 * time.Millisecond) // queued behind the first
	cancel()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned push: %v, want context.Canceled", err)
	}
	close(j.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "app", "after", "three") // the queue drains past it
	if _, err := s.Get(context.Background(), "app", "abandoned"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("the abandoned tag was written after its client gave up (%v)", err)
	}
	if _, err := j.Get(context.Background(), "app", "abandoned"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("the abandoned tag reached the journal (%v)", err)
	}
}

// waitReady waits until the store's cache has synced.
func waitReady(t testing.TB, s *kube.Store) {
	t.Helper()
	eventually(t, func() bool { return s.Ready() == nil })
}
