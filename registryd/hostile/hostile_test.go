// Package hostile holds the adversarial suite: three registryd replicas
// (each with its own handle on one bucket, as pods have) under racing and
// lying clients, on file:// and on S3 (versitygw). Every case ends with a
// scrub of the whole bucket: every blob hashes to its key, no tag points
// at a missing manifest.
package hostile

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob"
	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8srand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
	"github.com/stevedore-dev/stevedore/registryd/auth"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// backendIterations is iterations, halved for kube: each of its tag writes
// is a Repository status update through the API server, about ten times
// a bucket write.
func backendIterations(t *testing.T, backend string, def int) int {
	if backend == "kube" {
		def /= 2
	}
	return iterations(t, def)
}

// iterations scales every case; HOSTILE_ITERATIONS overrides the default
// (make test's short, real version).
func iterations(t *testing.T, def int) int {
	if s := os.Getenv("HOSTILE_ITERATIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("HOSTILE_ITERATIONS=%q", s)
		}
		return n
	}
	return def
}

// env is the API server of the kubernetes-mode cases, shared by the package.
var env *testenv.Env

func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard())
	os.Exit(testenv.Main(m, func(e *testenv.Env) (func(), error) { env = e; return nil, nil }))
}

// cluster is three replicas over one bucket.
type cluster struct {
	t       *testing.T
	urls    []string
	open    func() *blob.Bucket
	client  *http.Client
	status  sync.Map // status code -> *atomic.Int64, every answer seen
	counter atomic.Int64
	// dir is the bucket's directory on file://, "" elsewhere.
	dir string
	// namespace holds the Registry of the kube backend ("" elsewhere),
	// whose Repository status must equal the journal in the bucket.
	namespace string
	// apiCalls counts the requests the kube replicas sent to the API
	// server, watches apart.
	apiCalls atomic.Int64
}

// clusterOptions changes what newCluster builds.
type clusterOptions struct {
	// authorizer, if set, gives replica i its own Authorizer, as each pod
	// has its own guard and throttle.
	authorizer func(i int) server.Authorizer
	// bucket configures each replica's bucket tag store (immutable tags).
	bucket tags.BucketOptions
	// timeouts, if set, are the header, idle and body deadlines each
	// replica's server enforces (registryd's --read-header-timeout,
	// --idle-timeout and --body-timeout); off otherwise.
	timeouts time.Duration
}

func newCluster(t *testing.T, backend string) *cluster {
	t.Helper()
	return newClusterWith(t, backend, clusterOptions{})
}

func newClusterWith(t *testing.T, backend string, o clusterOptions) *cluster {
	t.Helper()
	ctx := context.Background()
	var open func() *blob.Bucket
	fileDir := ""
	switch backend {
	case "file", "kube":
		dir := t.TempDir()
		fileDir = dir
		open = func() *blob.Bucket {
			b, err := bucket.Open(ctx, "file://"+dir+"?metadata=skip", bucket.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			return b
		}
	case "s3":
		srv := storageservers.Start(t, storageservers.S3)
		prefix := fmt.Sprintf("hostile-%s/", strings.NewReplacer("/", "-").Replace(t.Name()))
		open = func() *blob.Bucket {
			b, err := bucket.Open(ctx, srv.URL, bucket.Options{Env: srv.Env, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			return b
		}
	default:
		t.Fatalf("backend %q", backend)
	}
	c := &cluster{t: t, open: open, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	c.dir = fileDir
	t.Cleanup(c.client.CloseIdleConnections)
	if backend == "kube" {
		c.namespace = newRegistry(t)
	}
	secret := []byte("hostile shared secret")
	logger := slog.New(slog.NewTextHandler(newTestLog(t), &slog.HandlerOptions{Level: slog.LevelError}))
	for i := range 3 {
		b := open()
		var store tags.Store = tags.NewBucketWith(b, o.bucket)
		if backend == "kube" {
			store = kubeReplica(t, c.namespace, store, &c.apiCalls)
		}
		opts := &server.Options{Secret: secret, Logger: logger}
		if o.authorizer != nil {
			opts.Authorizer = o.authorizer(i)
		}
		if o.timeouts > 0 {
			opts.BodyTimeout = o.timeouts
		}
		srv := httptest.NewUnstartedServer(server.New(b, store, opts))
		if o.timeouts > 0 {
			srv.Config.ReadHeaderTimeout, srv.Config.IdleTimeout = o.timeouts, o.timeouts
		}
		srv.Start()
		t.Cleanup(srv.Close)
		c.urls = append(c.urls, srv.URL)
	}
	return c
}

// testLog is an io.Writer into t's log that goes quiet once t ends (a
// goroutine may still log then). The replicas' errors (the cause of a 5xx)
// reach the test's output through it.
type testLog struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func newTestLog(t testing.TB) *testLog {
	l := &testLog{t: t}
	// Registered before the servers start, so it runs after they close.
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Logf("replica: %s", bytes.TrimSpace(p))
	}
	return len(p), nil
}

// newRegistry makes a namespace with a Registry "main" for the kube backend.
func newRegistry(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hostile-" + k8srand.String(8)}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	reg := &v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns.Name},
		Spec:       v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}},
	}
	if err := env.Client.Create(ctx, reg); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// kubeReplica is one replica's tag store on Repository status, with the
// bucket as its journal, as registryd runs with --registry.
func kubeReplica(t *testing.T, namespace string, journal tags.Store, calls *atomic.Int64) tags.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			if r.URL.Query().Get("watch") != "true" {
				calls.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	s, err := kube.New(ctx, cfg, kube.Options{Namespace: namespace, Registry: "main", Journal: journal, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); s.Ready() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("kube tag store not ready: %v", s.Ready())
		}
	}
	return s
}

// statusMatchesJournal checks that every Repository's status holds exactly
// the tags the bucket's journal holds, with the same digests: the journal
// gets only writes status committed, and gets all of them.
func (c *cluster) statusMatchesJournal() {
	c.t.Helper()
	ctx := context.Background()
	var list v1.RepositoryList
	if err := env.Client.List(ctx, &list, client.InNamespace(c.namespace)); err != nil {
		c.t.Fatal(err)
	}
	journal := tags.NewBucket(c.open())
	compared := 0
	for _, repo := range list.Items {
		inStatus := map[string]string{}
		for _, tag := range allTags(c.t, &repo) {
			inStatus[tag.Name] = tag.Digest
		}
		names, err := journal.List(ctx, repo.Spec.Name, 0, "")
		if err != nil {
			c.t.Fatalf("journal of %s: %v", repo.Spec.Name, err)
		}
		inJournal := map[string]string{}
		for _, name := range names {
			desc, err := journal.Get(ctx, repo.Spec.Name, name)
			if err != nil {
				c.t.Errorf("journal %s:%s listed but %v", repo.Spec.Name, name, err)
				continue
			}
			inJournal[name] = desc.Digest.String()
		}
		for name, d := range inStatus {
			if inJournal[name] != d {
				c.t.Errorf("%s:%s is %s in status, %q in the journal", repo.Spec.Name, name, d, inJournal[name])
			}
		}
		for name, d := range inJournal {
			if _, ok := inStatus[name]; !ok {
				c.t.Errorf("%s:%s is %s in the journal, not in status", repo.Spec.Name, name, d)
			}
		}
		compared += len(inStatus)
	}
	c.t.Logf("status equals journal: %d repositories, %d tags compared", len(list.Items), compared)
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request to replica i (mod 3); path may be a Location.
func (c *cluster) do(i int, method, path string, body []byte, hdr ...string) answer {
	u := path
	if p, err := url.Parse(path); err == nil && p.Host != "" {
		u = p.RequestURI()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.urls[i%len(c.urls)]+u, rd)
	if err != nil {
		c.t.Error(err)
		return answer{}
	}
	for k := 0; k+1 < len(hdr); k += 2 {
		req.Header.Set(hdr[k], hdr[k+1])
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Errorf("%s %s: %v", method, u, err)
		return answer{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	v, _ := c.status.LoadOrStore(resp.StatusCode, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	c.counter.Add(1)
	return answer{resp.StatusCode, resp.Header, b}
}

// doRetrying is do, sent again after Retry-After (up to 3 times) while the
// answer is 503, as crane and containerd do. Each 503 is logged: its cause
// is in the replica's error just before it. The invariants under test
// (nothing listed that does not pull, nothing corrupt) do not depend on it;
// a backend that fails a write now and then (versitygw once, in CI, under a
// racing DELETE) is answered 503 by design.
func (c *cluster) doRetrying(i int, method, path string, body []byte, hdr ...string) answer {
	a := c.do(i, method, path, body, hdr...)
	for try := 0; try < 3 && a.status == http.StatusServiceUnavailable; try++ {
		c.t.Logf("%s %s: 503 %s; retrying after Retry-After %q", method, path, bytes.TrimSpace(a.body), a.header.Get("Retry-After"))
		secs, _ := strconv.Atoi(a.header.Get("Retry-After"))
		time.Sleep(time.Duration(max(secs, 1)) * time.Second)
		a = c.do(i, method, path, body, hdr...)
	}
	return a
}

func (c *cluster) must(a answer, want int, what string) bool {
	c.t.Helper()
	if a.status != want {
		c.t.Errorf("%s: %d %s, want %d", what, a.status, bytes.TrimSpace(a.body), want)
		return false
	}
	return true
}

// parallel runs n iterations of f, at most width at once.
func parallel(n, width int, f func(i int)) {
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}

// finish scrubs the bucket and checks no answer was a 5xx but 503.
func (c *cluster) finish(name string, iters int) {
	c.t.Helper()
	if c.namespace != "" {
		c.statusMatchesJournal()
	}
	rep, err := storage.Scrub(context.Background(), c.open())
	if err != nil {
		c.t.Fatalf("scrub: %v", err)
	}
	for _, p := range rep.Problems() {
		c.t.Error(p)
	}
	var codes []string
	c.status.Range(func(k, v any) bool {
		code := k.(int)
		codes = append(codes, fmt.Sprintf("%d×%d", code, v.(*atomic.Int64).Load()))
		if code >= 500 && code != http.StatusServiceUnavailable {
			c.t.Errorf("%d answers with status %d", v.(*atomic.Int64).Load(), code)
		}
		return true
	})
	c.t.Logf("%s: %d iterations, %d requests (%s); scrub: %d blobs, %d manifest links, %d tags, %d corrupt, %d dangling links, %d dangling tags",
		name, iters, c.counter.Load(), strings.Join(codes, " "), rep.Blobs, rep.Manifests, rep.Tags,
		len(rep.Corrupt), len(rep.DanglingLinks), len(rep.DanglingTags))
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// backends of the blob cases; the tag cases add kube (tags in Repository
// status over envtest, the bucket as journal).
var (
	backends    = []string{"file", "s3"}
	tagBackends = []string{"file", "s3", "kube"}
)

// TestRacingChunks: two PATCHes with the same upload state, one carrying
// X and one Y, race; each state that got 202 is committed with its own
// digest. Whatever wins, the blob of X holds X's bytes and Y's Y's (the
// poisoning reproduced in issue 13 linked the winner's part under the
// loser's digest).
func TestRacingChunks(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, backend)
			n := iterations(t, 300)
			var poisoned, committed atomic.Int64
			parallel(n, 6, func(i int) {
				repo := fmt.Sprintf("race/chunks%d", i%4)
				start := c.do(i, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
				if !c.must(start, 202, "start upload") {
					return
				}
				loc := start.header.Get("Location")
				contents := [][]byte{random(16 << 10), random(16 << 10)}
				locs := make([]string, 2)
				var wg sync.WaitGroup
				for j, content := range contents {
					wg.Go(func() {
						a := c.do(i+1+j, "PATCH", loc, content,
							"Content-Range", fmt.Sprintf("0-%d", len(content)-1), "Content-Type", "application/octet-stream")
						switch a.status {
						case 202:
							locs[j] = a.header.Get("Location")
						case 416: // lost the race, and was told so
						default:
							t.Errorf("racing PATCH: %d %s", a.status, a.body)
						}
					})
				}
				wg.Wait()
				for j, l := range locs {
					if l == "" {
						continue
					}
					d := digest.FromBytes(contents[j])
					a := c.do(i+2+j, "PUT", withDigest(l, d), nil)
					switch a.status {
					case 201:
						committed.Add(1)
					case 404: // the other state committed first and ended the upload
					default:
						t.Errorf("PUT ?digest=: %d %s", a.status, a.body)
					}
				}
				for j, content := range contents {
					d := digest.FromBytes(content)
					g := c.do(i+j, "GET", "/v2/"+repo+"/blobs/"+d.String(), nil)
					if g.status == 200 && !bytes.Equal(g.body, content) {
						poisoned.Add(1)
						t.Errorf("blob %s serves other bytes (poisoned)", d)
					}
				}
			})
			if committed.Load() == 0 {
				t.Fatal("no upload committed: the test exercised nothing")
			}
			if c.dir != "" {
				// Every upload was committed or ended by the other state's
				// commit: nothing, not even an empty directory, stays.
				left, _ := os.ReadDir(filepath.Join(c.dir, "uploads"))
				if len(left) > 0 {
					t.Errorf("%d entries left under uploads/ (first %s)", len(left), left[0].Name())
				}
			}
			t.Logf("%d commits, %d poisoned blobs", committed.Load(), poisoned.Load())
			c.finish("racing chunks", n)
		})
	}
}

func withDigest(loc string, d digest.Digest) string {
	u, _ := url.Parse(loc)
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	return u.String()
}

// TestLyingMonolithicPush: an honest client pushes X with ?digest=d(X)
// while a liar sends Y with the same digest; the liar gets 400 and the
// blob holds X, whichever request the storage saw first.
func TestLyingMonolithicPush(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, backend)
			n := iterations(t, 200)
			parallel(n, 6, func(i int) {
				x, y := random(8<<10), random(8<<10)
				d := digest.FromBytes(x)
				path := "/v2/race/monolithic/blobs/uploads/?digest=" + d.String()
				var honest, liar answer
				var wg sync.WaitGroup
				wg.Go(func() { honest = c.do(i, "POST", path, x, "Content-Type", "application/octet-stream") })
				wg.Go(func() { liar = c.do(i+1, "POST", path, y, "Content-Type", "application/octet-stream") })
				wg.Wait()
				c.must(honest, 201, "honest push")
				c.must(liar, 400, "lying push")
				g := c.do(i+2, "GET", "/v2/race/monolithic/blobs/"+d.String(), nil)
				if c.must(g, 200, "pull") && !bytes.Equal(g.body, x) {
					t.Errorf("blob %s serves the liar's bytes", d)
				}
			})
			c.finish("lying monolithic push", n)
		})
	}
}

// pushImage pushes a config blob and a manifest naming it, by digest, and
// returns the manifest and its digest.
func (c *cluster) pushImage(i int, repo string, config []byte) ([]byte, digest.Digest, bool) {
	cd := digest.FromBytes(config)
	if !c.must(c.do(i, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), config), 201, "push config") {
		return nil, "", false
	}
	m, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{},
	})
	md := digest.FromBytes(m)
	ok := c.must(c.do(i+1, "PUT", "/v2/"+repo+"/manifests/"+md.String(), m, "Content-Type", ocispec.MediaTypeImageManifest), 201, "push manifest")
	return m, md, ok
}

// TestDeleteManifestRacingTagPut: PUT manifests/<tag> races DELETE
// manifests/<digest> of the same manifest on other replicas. Either may
// win, but a tag that is listed afterwards must be pullable.
func TestDeleteManifestRacingTagPut(t *testing.T) {
	for _, backend := range tagBackends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, backend)
			n := backendIterations(t, backend, 300)
			var unpullable, deleted, stale atomic.Int64
			// The bucket store reads live: no staleness allowed. Repository
			// status comes from each replica's watch cache (as in
			// TestTagOverwritesAcrossReplicas).
			staleLimit := time.Duration(0)
			if c.namespace != "" {
				staleLimit = 5 * time.Second
			}
			parallel(n, 6, func(i int) {
				repo := fmt.Sprintf("race/delete%d", i%3)
				m, md, ok := c.pushImage(i, repo, []byte(fmt.Sprintf(`{"iteration":%d,"rand":%q}`, i, random(8))))
				if !ok {
					return
				}
				tag := fmt.Sprintf("t%d", i)
				var put, del answer
				var wg sync.WaitGroup
				wg.Go(func() {
					put = c.doRetrying(i, "PUT", "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", ocispec.MediaTypeImageManifest)
				})
				wg.Go(func() { del = c.do(i+1, "DELETE", "/v2/"+repo+"/manifests/"+md.String(), nil) })
				wg.Wait()
				c.must(put, 201, "tag PUT")
				if del.status == 202 {
					deleted.Add(1)
				} else if del.status != 404 {
					t.Errorf("DELETE: %d %s", del.status, del.body)
				}
				// Whatever the order: a tag that exists resolves. Replicas
				// read from their caches, so one may still list a tag
				// another replica's DELETE removed a moment ago (for the
				// replica that pushed it, its own write stands in until its
				// cache has the DELETE): the replicas must agree once
				// their caches caught up, within staleLimit.
				var g answer
				for deadline := time.Now().Add(staleLimit); ; {
					g = c.do(i+2, "GET", "/v2/"+repo+"/manifests/"+tag, nil, "Accept", ocispec.MediaTypeImageManifest)
					if g.status == 200 {
						return
					}
					if _, err := getTag(c, i, repo, tag); err != nil {
						return // not listed either: deleted
					}
					if time.Now().After(deadline) {
						break
					}
					stale.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
				unpullable.Add(1)
				t.Errorf("tag %s:%s is still listed %s after the race but GET answers %d %s (the racing DELETE answered %d %s)", repo, tag, staleLimit, g.status, g.body, del.status, del.body)
			})
			t.Logf("%d deletes won, %d tags listed but not pullable, %d reads of a replica still listing a deleted tag", deleted.Load(), unpullable.Load(), stale.Load())
			c.finish("delete manifest vs tag put", n)
		})
	}
}

// getTag reports whether tag is in repo's tag list on replica i.
func getTag(c *cluster, i int, repo, tag string) (bool, error) {
	a := c.do(i, "GET", "/v2/"+repo+"/tags/list", nil)
	if a.status == 404 {
		return false, fmt.Errorf("no repository")
	}
	var list struct{ Tags []string }
	if err := json.Unmarshal(a.body, &list); err != nil {
		return false, err
	}
	for _, t := range list.Tags {
		if t == tag {
			return true, nil
		}
	}
	return false, fmt.Errorf("not listed")
}

// TestTagOverwritesAcrossReplicas: X sets A, Y sets B, X sets A again;
// every replica then answers A. Then a storm of concurrent overwrites from
// all three: afterwards all replicas agree on one of the pushed digests.
func TestTagOverwritesAcrossReplicas(t *testing.T) {
	for _, backend := range tagBackends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, backend)
			n := backendIterations(t, backend, 200)
			repo := "race/overwrite"
			var images [][]byte
			var digests []digest.Digest
			for k := range 3 {
				m, md, ok := c.pushImage(k, repo, []byte(fmt.Sprintf(`{"image":%d}`, k)))
				if !ok {
					t.FailNow()
				}
				images, digests = append(images, m), append(digests, md)
			}
			put := func(replica, img int, tag string) {
				c.must(c.do(replica, "PUT", "/v2/"+repo+"/manifests/"+tag, images[img], "Content-Type", ocispec.MediaTypeImageManifest), 201, "tag PUT")
			}
			resolve := func(replica int, tag string) digest.Digest {
				a := c.do(replica, "HEAD", "/v2/"+repo+"/manifests/"+tag, nil, "Accept", ocispec.MediaTypeImageManifest)
				return digest.Digest(a.header.Get("Docker-Content-Digest"))
			}
			// The bucket store reads live: every replica answers the last
			// write at once. Repository status is read from each replica's
			// watch cache: another replica's write shows once the watch
			// event arrives (docs/operator.md), bounded here.
			lagAllowed := time.Duration(0)
			if c.namespace != "" {
				lagAllowed = 5 * time.Second
			}
			var maxLag atomic.Int64
			converge := func(r int, tag string, want digest.Digest) digest.Digest {
				start := time.Now()
				for attempt := 0; ; attempt++ {
					got := resolve(r, tag)
					lag := time.Since(start)
					if got == want || lag >= lagAllowed {
						if got == want && attempt > 0 && int64(lag) > maxLag.Load() {
							maxLag.Store(int64(lag))
						}
						return got
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			parallel(n, 4, func(i int) {
				tag := fmt.Sprintf("seq%d", i)
				put(i, 0, tag)   // X -> A
				put(i+1, 1, tag) // Y -> B
				put(i, 0, tag)   // X -> A
				for r := range 3 {
					if got := converge(r, tag, digests[0]); got != digests[0] {
						t.Errorf("replica %d resolves %s to %s %v after X→A, Y→B, X→A; want A %s", r, tag, got, lagAllowed, digests[0])
					}
				}
			})
			// The storm: one tag, n writes of random images from all replicas.
			parallel(n, 12, func(i int) { put(i, i%3, "storm") })
			// No replica's first answer is the truth: replica 0's cache may
			// be the one still missing the last write. All three must come
			// to agree, within the lag allowed.
			var answers [3]digest.Digest
			for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
				for r := range answers {
					answers[r] = resolve(r, "storm")
				}
				if answers[0] == answers[1] && answers[1] == answers[2] || time.Since(start) >= lagAllowed {
					break
				}
			}
			if answers[0] != answers[1] || answers[1] != answers[2] {
				t.Errorf("after the storm the replicas resolve storm to %v, not one digest within %v", answers, lagAllowed)
			}
			t.Logf("longest wait for a stale replica to answer the last write: %v", time.Duration(maxLag.Load()).Round(time.Millisecond))
			c.finish("tag overwrites", 2*n)
		})
	}
}

// failedChecks reads registryd_auth_failures_total{reason="invalid_credentials"}
// from reg: the password checks that failed, each a bcrypt comparison paid.
func failedChecks(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "registryd_auth_failures_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == "invalid_credentials" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestBadPasswordStorm: htpasswd auth on each replica (its own guard and
// throttle, as each pod has), a storm of bad passwords for one user from
// one address spread over the three replicas. Once each replica's
// throttle engages, the rest cost no password check; meanwhile the same
// user, logged in before the storm, pushes and pulls through every
// replica, and a user logging in for the first time from another address
// gets in.
func TestBadPasswordStorm(t *testing.T) {
	file := filepath.Join(t.TempDir(), "htpasswd")
	var entries []byte
	for _, u := range []string{"alice", "carol"} {
		// The lowest cost: the suite counts checks, the e2e TestLoginStorm
		// measures what a real-cost check costs a real process.
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-right-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, u+":"+string(h)+"\n"...)
	}
	if err := os.WriteFile(file, entries, 0o600); err != nil {
		t.Fatal(err)
	}
	metrics := make([]*prometheus.Registry, 3)
	c := newClusterWith(t, "file", clusterOptions{authorizer: func(i int) server.Authorizer {
		h, err := auth.NewHtpasswd(auth.HtpasswdOptions{File: file, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		metrics[i] = prometheus.NewRegistry()
		g, err := auth.New(auth.Options{Mode: auth.Htpasswd, Backend: h, Registerer: metrics[i],
			Secret: []byte("hostile shared secret"), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}})
	basic := func(user, pass string) []string {
		return []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
	}
	checks := func() (n float64) {
		for _, m := range metrics {
			n += failedChecks(t, m)
		}
		return n
	}
	alice := basic("alice", "alice-right-pw")
	for i := range 3 {
		c.must(c.do(i, "GET", "/v2/", nil, alice...), 200, "alice before the storm")
	}
	// Engage every replica's throttle.
	for i := range 3 {
		engaged := false
		for k := 0; k < 40 && !engaged; k++ {
			a := c.do(i, "GET", "/v2/", nil, basic("alice", fmt.Sprint("guess-", k))...)
			engaged = a.status == http.StatusTooManyRequests
			if !engaged && a.status != http.StatusUnauthorized {
				t.Fatalf("bad password on replica %d: %d", i, a.status)
			}
		}
		if !engaged {
			t.Fatalf("replica %d: 40 bad passwords, no throttle", i)
		}
	}
	before := checks()
	storm := iterations(t, 1000)
	var throttled, legit atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
		defer other.CloseIdleConnections()
		for i := 0; ; i++ {
			// alice pushes and pulls through every replica in turn.
			blob := random(4 << 10)
			d := digest.FromBytes(blob)
			if c.must(c.do(i, "POST", "/v2/storm/alice/blobs/uploads/?digest="+d.String(), blob, append(alice, "Content-Type", "application/octet-stream")...), 201, "alice pushes during the storm") &&
				c.must(c.do(i+1, "GET", "/v2/storm/alice/blobs/"+d.String(), nil, alice...), 200, "alice pulls during the storm") {
				legit.Add(1)
			}
			// carol, from another address, logs in for the first time.
			req, _ := http.NewRequest("GET", c.urls[i%3]+"/v2/", nil)
			req.SetBasicAuth("carol", "carol-right-pw")
			if resp, err := other.Do(req); err != nil || resp.StatusCode != 200 {
				t.Errorf("carol from 127.0.0.2 during the storm: %v %v", resp, err)
			} else {
				resp.Body.Close()
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	parallel(storm, 8, func(i int) {
		a := c.do(i, "GET", "/v2/", nil, basic("alice", "storm")...)
		switch a.status {
		case http.StatusTooManyRequests:
			throttled.Add(1)
		case http.StatusUnauthorized:
		default:
			t.Errorf("bad password: %d", a.status)
		}
	})
	close(stop)
	wg.Wait()
	paid := checks() - before
	t.Logf("bad-password storm: %d bad passwords over 3 replicas after their throttles engaged: %d answered 429, %.0f failed password checks paid; alice pushed and pulled %d times meanwhile",
		storm, throttled.Load(), paid, legit.Load())
	// Each replica refills one check per 12 s for the (address, user) pair.
	if paid > 3*3 {
		t.Errorf("the storm cost %.0f password checks, want at most a refill's few", paid)
	}
	if legit.Load() == 0 {
		t.Error("alice never pushed during the storm")
	}
	c.finish("bad-password storm", storm)
}

// TestSlowloris: 150 connections spread over the three replicas trickle
// request headers or PATCH bodies a byte a second, redialling whenever a
// replica cuts them, while honest clients push chunked uploads and
// manifests through every replica. Each replica cuts the tricklers at its
// deadlines (2 s here), every honest request succeeds, and the bucket
// scrubs clean: nothing a trickled PATCH sent is committed.
func TestSlowloris(t *testing.T) {
	const conns, deadline = 150, 2 * time.Second
	c := newClusterWith(t, "file", clusterOptions{timeouts: deadline})
	start := c.do(0, "POST", "/v2/slow/trickled/blobs/uploads/", nil)
	if !c.must(start, 202, "start the trickled upload") {
		t.FailNow()
	}
	trickled, err := url.Parse(start.header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var opened, cut atomic.Int64
	var wg sync.WaitGroup
	for i := range conns {
		host := strings.TrimPrefix(c.urls[i%3], "http://")
		wg.Go(func() {
			for ctx.Err() == nil {
				conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
				if err != nil {
					continue
				}
				opened.Add(1)
				if i%2 == 0 {
					fmt.Fprintf(conn, "GET /v2/ HTTP/1.1\r\nHost: x\r\n")
				} else {
					fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: 0-999999\r\nContent-Length: 1000000\r\n\r\n", trickled.RequestURI())
				}
				for ctx.Err() == nil {
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
					if _, err := conn.Write([]byte("x")); err != nil {
						cut.Add(1)
						break
					}
				}
				conn.Close()
			}
		})
	}
	n := iterations(t, 100)
	began := time.Now()
	parallel(n, 6, func(i int) {
		repo := fmt.Sprintf("slow/honest%d", i%3)
		st := c.do(i, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
		if !c.must(st, 202, "start upload") {
			return
		}
		content := random(64 << 10)
		p := c.do(i+1, "PATCH", st.header.Get("Location"), content,
			"Content-Range", fmt.Sprintf("0-%d", len(content)-1), "Content-Type", "application/octet-stream")
		if !c.must(p, 202, "PATCH") {
			return
		}
		c.must(c.do(i+2, "PUT", withDigest(p.header.Get("Location"), digest.FromBytes(content)), nil), 201, "commit")
		c.pushImage(i, repo, []byte(fmt.Sprintf(`{"slow":%d}`, i)))
	})
	honest := time.Since(began)
	// Every trickler outlives at least two deadlines before it is stopped.
	time.Sleep(time.Until(began.Add(3 * deadline)))
	cancel()
	wg.Wait()
	t.Logf("slowloris: %d connections trickling over 3 replicas (%d opened, %d cut by a deadline); %d honest uploads and image pushes took %v",
		conns, opened.Load(), cut.Load(), n, honest.Round(time.Millisecond))
	if cut.Load() < conns/2 {
		t.Errorf("only %d trickling connections were cut", cut.Load())
	}
	// Nothing a trickler sent was stored: a PATCH cut off mid-body leaves
	// no part, and the honest uploads were committed and cleaned up.
	parts, _ := filepath.Glob(filepath.Join(c.dir, "uploads", "*", "part-*"))
	if len(parts) > 0 {
		t.Errorf("%d upload parts left after the storm (first %s)", len(parts), parts[0])
	}
	c.finish("slowloris", n)
}

// TestImmutableDeleteRePush: with --immutable-tags, a client tries to move
// an immutable tag by deleting it (by tag, and by the digest it points at)
// while pushing another image under it, each on another replica; and two
// clients race the first push of an immutable tag. Every removal and move
// is refused with DENIED; of the racing first pushes exactly one wins; the
// tag resolves to the same digest on every replica, and its manifest is
// still there.
func TestImmutableDeleteRePush(t *testing.T) {
	rules, err := tags.MustRules("flag --immutable-tags", []string{"v[0-9]+.*"})
	if err != nil {
		t.Fatal(err)
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c := newClusterWith(t, backend, clusterOptions{bucket: tags.BucketOptions{ImmutableTags: rules}})
			n := iterations(t, 100)
			var moved, races atomic.Int64
			resolve := func(replica int, repo, tag string) digest.Digest {
				a := c.do(replica, "HEAD", "/v2/"+repo+"/manifests/"+tag, nil, "Accept", ocispec.MediaTypeImageManifest)
				return digest.Digest(a.header.Get("Docker-Content-Digest"))
			}
			denied := func(a answer, what string) {
				if a.status != 403 || !bytes.Contains(a.body, []byte(`"code":"DENIED"`)) || !bytes.Contains(a.body, []byte("is immutable")) {
					moved.Add(1)
					t.Errorf("%s: %d %s, want 403 DENIED", what, a.status, bytes.TrimSpace(a.body))
				}
			}
			parallel(n, 6, func(i int) {
				repo := fmt.Sprintf("race/immutable%d", i%3)
				tag := fmt.Sprintf("v%d", i)
				a, ad, ok := c.pushImage(i, repo, []byte(fmt.Sprintf(`{"a":%d,"rand":%q}`, i, random(8))))
				b, bd, okB := c.pushImage(i+1, repo, []byte(fmt.Sprintf(`{"b":%d,"rand":%q}`, i, random(8))))
				if !ok || !okB || !c.must(c.do(i, "PUT", "/v2/"+repo+"/manifests/"+tag, a, "Content-Type", ocispec.MediaTypeImageManifest), 201, "first push") {
					return
				}
				var delTag, delDigest, rePush answer
				var wg sync.WaitGroup
				wg.Go(func() { delTag = c.do(i+1, "DELETE", "/v2/"+repo+"/manifests/"+tag, nil) })
				wg.Go(func() { delDigest = c.do(i+2, "DELETE", "/v2/"+repo+"/manifests/"+ad.String(), nil) })
				wg.Go(func() {
					rePush = c.do(i, "PUT", "/v2/"+repo+"/manifests/"+tag, b, "Content-Type", ocispec.MediaTypeImageManifest)
				})
				wg.Wait()
				denied(delTag, "DELETE by tag")
				denied(delDigest, "DELETE by digest")
				denied(rePush, "push of another image under the tag")

				// Racing first pushes of a new immutable tag.
				race := tag + "-race"
				var first [2]answer
				for k, m := range [][]byte{a, b} {
					wg.Go(func() {
						first[k] = c.do(i+k, "PUT", "/v2/"+repo+"/manifests/"+race, m, "Content-Type", ocispec.MediaTypeImageManifest)
					})
				}
				wg.Wait()
				var want digest.Digest
				switch {
				case first[0].status == 201 && first[1].status == 403:
					want = ad
				case first[1].status == 201 && first[0].status == 403:
					want = bd
				default:
					moved.Add(1)
					t.Errorf("racing first pushes of %s: %d and %d, want one 201 and one 403", race, first[0].status, first[1].status)
				}
				races.Add(1)
				for r := range 3 {
					if got := resolve(r, repo, tag); got != ad {
						moved.Add(1)
						t.Errorf("replica %d resolves %s:%s to %s, want %s", r, repo, tag, got, ad)
					}
					if got := resolve(r, repo, race); want != "" && got != want {
						moved.Add(1)
						t.Errorf("replica %d resolves %s:%s to %s, the winner pushed %s", r, repo, race, got, want)
					}
					c.must(c.do(r, "GET", "/v2/"+repo+"/manifests/"+ad.String(), nil, "Accept", ocispec.MediaTypeImageManifest), 200, "GET the immutable tag's manifest by digest")
				}
			})
			t.Logf("%d immutable tags attacked by delete+re-push, %d moved or removed; %d first-push races", n, moved.Load(), races.Load())
			c.finish("immutable delete+re-push", n)
		})
	}
}
