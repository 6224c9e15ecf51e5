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
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

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
}

func newCluster(t *testing.T, backend string) *cluster {
	t.Helper()
	return newClusterWith(t, backend, tags.BucketOptions{})
}

// newClusterWith is newCluster whose replicas' tag stores have opts.
func newClusterWith(t *testing.T, backend string, opts tags.BucketOptions) *cluster {
	t.Helper()
	ctx := context.Background()
	var open func() *blob.Bucket
	fileDir := ""
	switch backend {
	case "file":
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
	secret := []byte("hostile shared secret")
	for range 3 {
		b := open()
		srv := httptest.NewServer(server.New(b, tags.NewBucketWith(b, opts), &server.Options{
			Secret: secret, Logger: slog.New(slog.DiscardHandler),
		}))
		t.Cleanup(srv.Close)
		c.urls = append(c.urls, srv.URL)
	}
	return c
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

var backends = []string{"file", "s3"}

// TestRacingChunks: two PATCHes with the same upload state, one carrying
// X and one Y, race; each state that got 202 is committed with its own
// digest. Whatever wins, the blob of X holds X's bytes and Y's Y's (the
// poisoning reproduced in issue 13 linked the winner's part under the
// loser's digest).
func TestRacingChunks(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
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
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			c := newCluster(t, backend)
			n := iterations(t, 300)
			var unpullable, deleted atomic.Int64
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
					put = c.do(i, "PUT", "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", ocispec.MediaTypeImageManifest)
				})
				wg.Go(func() { del = c.do(i+1, "DELETE", "/v2/"+repo+"/manifests/"+md.String(), nil) })
				wg.Wait()
				c.must(put, 201, "tag PUT")
				if del.status == 202 {
					deleted.Add(1)
				} else if del.status != 404 {
					t.Errorf("DELETE: %d %s", del.status, del.body)
				}
				// Whatever the order: a tag that exists resolves.
				g := c.do(i+2, "GET", "/v2/"+repo+"/manifests/"+tag, nil, "Accept", ocispec.MediaTypeImageManifest)
				if g.status == 200 {
					return
				}
				if _, err := getTag(c, i, repo, tag); err == nil {
					unpullable.Add(1)
					t.Errorf("tag %s:%s is listed but GET answers %d %s (the racing DELETE answered %d %s)", repo, tag, g.status, g.body, del.status, del.body)
				}
			})
			t.Logf("%d deletes won, %d tags listed but not pullable", deleted.Load(), unpullable.Load())
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
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			c := newCluster(t, backend)
			n := iterations(t, 200)
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
			parallel(n, 4, func(i int) {
				tag := fmt.Sprintf("seq%d", i)
				put(i, 0, tag)   // X -> A
				put(i+1, 1, tag) // Y -> B
				put(i, 0, tag)   // X -> A
				for r := range 3 {
					if got := resolve(r, tag); got != digests[0] {
						t.Errorf("replica %d resolves %s to %s after X→A, Y→B, X→A; want A %s", r, tag, got, digests[0])
					}
				}
			})
			// The storm: one tag, n writes of random images from all replicas.
			parallel(n, 12, func(i int) { put(i, i%3, "storm") })
			first := resolve(0, "storm")
			for r := 1; r < 3; r++ {
				if got := resolve(r, "storm"); got != first {
					t.Errorf("after the storm replica %d resolves %s, replica 0 %s", r, got, first)
				}
			}
			c.finish("tag overwrites", 2*n)
		})
	}
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
			c := newClusterWith(t, backend, tags.BucketOptions{ImmutableTags: rules})
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
