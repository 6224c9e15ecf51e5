package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// upstream is a registry the mirror caches: pushes go through push (a
// server of its own over the same bucket), the mirror reaches it at url,
// where every request is counted and, with a user, needs basic auth.
type upstream struct {
	push *testRegistry
	srv  *httptest.Server
	url  string

	mu     sync.Mutex
	counts map[string]int // "GET blobs", "HEAD manifests", …
	// lie, when set, replaces every blob body with itself (same length).
	lie []byte
	// pace, when set, sleeps this long before each write of a blob body.
	pace time.Duration
	// headDelay, when set, delays every manifest HEAD.
	headDelay time.Duration
}

type pacedWriter struct {
	http.ResponseWriter
	pace time.Duration
}

func (p pacedWriter) Write(b []byte) (int, error) {
	time.Sleep(p.pace)
	return p.ResponseWriter.Write(b)
}

func newUpstream(t *testing.T, user, pass string) *upstream {
	t.Helper()
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { _ = b.Close() })
	u := &upstream{push: serveBucket(t, b, nil), counts: map[string]int{}}
	inner := New(b, tags.NewBucket(b), &Options{Logger: slog.New(slog.DiscardHandler)})
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user != "" {
			if got, gotPass, ok := r.BasicAuth(); !ok || got != user || gotPass != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="upstream"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		kind := "other"
		switch {
		case strings.Contains(r.URL.Path, "/blobs/"):
			kind = "blobs"
		case strings.Contains(r.URL.Path, "/manifests/"):
			kind = "manifests"
		}
		u.mu.Lock()
		u.counts[r.Method+" "+kind]++
		lie, pace, headDelay := u.lie, u.pace, u.headDelay
		u.mu.Unlock()
		if headDelay > 0 && kind == "manifests" && r.Method == http.MethodHead {
			time.Sleep(headDelay)
		}
		if pace > 0 && kind == "blobs" && r.Method == http.MethodGet {
			w = pacedWriter{ResponseWriter: w, pace: pace}
		}
		if lie != nil && kind == "blobs" && r.Method == http.MethodGet {
			w.Header().Set("Content-Length", fmt.Sprint(len(lie)))
			_, _ = w.Write(lie)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	u.url = u.srv.URL
	return u
}

func (u *upstream) host() string { return strings.TrimPrefix(u.url, "http://") }

func (u *upstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *upstream) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	clear(u.counts)
}

// newMirrors serves n registries over one bucket, each with a Mirror of
// its own (n replicas), for cfg.
func newMirrors(t *testing.T, n int, cfg mirror.Config, logs *bytes.Buffer) ([]*testRegistry, *blob.Bucket) {
	t.Helper()
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { _ = b.Close() })
	log := slog.New(slog.DiscardHandler)
	if logs != nil {
		log = slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, nil))
	}
	var out []*testRegistry
	for range n {
		c := cfg
		m, err := mirror.New(&c, b, tags.NewBucket(b), &mirror.Options{Logger: log, PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, serveBucket(t, b, &Options{Mirror: m, Logger: log}))
	}
	return out, b
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// pullImage pulls manifest ref of repo and every blob it names through
// the mirror with query q, and checks the bytes.
func pullImage(t *testing.T, r *testRegistry, repo, ref, q string, want map[digest.Digest][]byte) digest.Digest {
	t.Helper()
	resp := r.do("GET", "/v2/"+repo+"/manifests/"+ref+q, nil, "Accept", ocispec.MediaTypeImageManifest)
	r.expect(resp, http.StatusOK, "")
	for d, content := range want {
		got := r.do("GET", "/v2/"+repo+"/blobs/"+d.String()+q, nil)
		r.expect(got, http.StatusOK, "")
		if !bytes.Equal(got.body, content) {
			t.Fatalf("blob %s: got %d bytes, not the %d upstream holds", d, len(got.body), len(content))
		}
	}
	return digest.Digest(resp.header.Get("Docker-Content-Digest"))
}

func TestMirrorRouting(t *testing.T) {
	up := newUpstream(t, "", "")
	config, layer := []byte(`{"architecture":"amd64"}`), randomBytes(4096)
	md := up.push.pushImage("library/alpine", "3", config, layer)
	up.push.pushImage("team/app", "1", config, layer)
	blobs := map[digest.Digest][]byte{digest.FromBytes(config): config, digest.FromBytes(layer): layer}
	// docker.io, reached at the test upstream, shows the library/ rule;
	// the upstream's own host name, the port's mapping; team/* globs.
	mirrors, bucket := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{
		{Host: "docker.io", Endpoint: up.url, Repositories: []string{"library/*"}},
		{Host: up.host(), Endpoint: up.url, Repositories: []string{"team/*"}},
	}}, nil)
	m := mirrors[0]
	portPrefix := strings.ReplaceAll(up.host(), ":", "_")

	for _, tc := range []struct {
		name, repo, query string
		wantLocal         string // the repository caching it
	}{
		{"ns docker.io with library", "library/alpine", "?ns=docker.io", "docker.io/library/alpine"},
		{"path form docker.io without library", "docker.io/alpine", "", "docker.io/library/alpine"},
		{"path form docker.io", "docker.io/library/alpine", "", "docker.io/library/alpine"},
		{"ns host with port", "team/app", "?ns=" + up.host(), portPrefix + "/team/app"},
		{"path form host with port", portPrefix + "/team/app", "", portPrefix + "/team/app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := "3"
			if strings.Contains(tc.wantLocal, "team") {
				ref = "1"
			}
			if got := pullImage(t, m, tc.repo, ref, tc.query, blobs); got != md {
				t.Fatalf("pulled manifest %s, upstream has %s", got, md)
			}
			if len(keys(t, bucket, storage.TagKey(tc.wantLocal, ref))) != 1 {
				t.Fatalf("no cached tag under %s: %v", tc.wantLocal, keys(t, bucket, "repos/"))
			}
		})
	}

	for _, tc := range []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"unknown ns", "GET", "/v2/library/alpine/manifests/3?ns=quay.io", 404, "NAME_UNKNOWN"},
		{"outside the globs", "GET", "/v2/other/app/manifests/1?ns=docker.io", 404, "NAME_UNKNOWN"},
		{"push into a mirrored namespace", "POST", "/v2/docker.io/library/alpine/blobs/uploads/", 403, "DENIED"},
		{"push with ns", "PUT", "/v2/library/alpine/manifests/evil?ns=docker.io", 403, "DENIED"},
		{"missing upstream tag", "GET", "/v2/library/alpine/manifests/nope?ns=docker.io", 404, "MANIFEST_UNKNOWN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.expect(m.do(tc.method, tc.path, []byte("{}")), tc.status, tc.code)
		})
	}

	t.Run("own repositories still take pushes", func(t *testing.T) {
		d := m.pushImage("own/app", "1", config, layer)
		got := m.do("GET", "/v2/own/app/manifests/1", nil)
		m.expect(got, 200, "")
		if got.header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("own pull got %s", got.header.Get("Docker-Content-Digest"))
		}
	})
	t.Run("no mirror: ns is refused, never the own repository", func(t *testing.T) {
		plain := newTestRegistry(t, nil)
		plain.pushImage("library/alpine", "3", config, layer)
		plain.expect(plain.do("GET", "/v2/library/alpine/manifests/3?ns=docker.io", nil), 404, "NAME_UNKNOWN")
	})
}

func TestMirrorFetchesEachBlobOnceAcrossReplicas(t *testing.T) {
	up := newUpstream(t, "", "")
	config, big, small := []byte(`{"architecture":"arm64"}`), randomBytes(3<<20), randomBytes(1000)
	up.push.pushImage("x", "1", config, big, small)
	blobs := map[digest.Digest][]byte{digest.FromBytes(config): config, digest.FromBytes(big): big, digest.FromBytes(small): small}
	replicas, _ := newMirrors(t, 3, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)

	const clients = 12
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { pullImage(t, replicas[i%3], "x", "1", "?ns="+up.host(), blobs) })
	}
	wg.Wait()
	if got := up.count("GET blobs"); got != len(blobs) {
		t.Fatalf("%d clients over 3 replicas made %d upstream blob GETs for %d blobs, want one each", clients, got, len(blobs))
	}
	if got := up.count("GET manifests"); got != 1 {
		t.Fatalf("upstream manifest GETs: %d, want 1", got)
	}
}

func TestMirrorTagTTLAndOffline(t *testing.T) {
	up := newUpstream(t, "", "")
	config, layer := []byte(`{"v":1}`), randomBytes(2048)
	d1 := up.push.pushImage("app", "latest", config, layer)
	blobs := map[digest.Digest][]byte{digest.FromBytes(config): config, digest.FromBytes(layer): layer}
	const ttl = 300 * time.Millisecond
	mirrors, _ := newMirrors(t, 1, mirror.Config{TagTTL: mirror.Duration{Duration: ttl}, Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)
	m, q := mirrors[0], "?ns="+up.host()

	pullImage(t, m, "app", "latest", q, blobs)
	up.reset()
	t.Run("within the TTL the upstream is not asked", func(t *testing.T) {
		if got := pullImage(t, m, "app", "latest", q, blobs); got != d1 {
			t.Fatalf("got %s, want %s", got, d1)
		}
		if len(up.counts) != 0 {
			t.Fatalf("upstream asked within the TTL: %v", up.counts)
		}
	})
	t.Run("after the TTL one HEAD, no GET", func(t *testing.T) {
		time.Sleep(ttl)
		pullImage(t, m, "app", "latest", q, blobs)
		if up.count("HEAD manifests") != 1 || up.count("GET manifests") != 0 || up.count("GET blobs") != 0 {
			t.Fatalf("upstream requests after the TTL: %v, want one HEAD of the manifest", up.counts)
		}
	})
	layer2 := randomBytes(2048)
	d2 := up.push.pushImage("app", "latest", config, layer2)
	blobs2 := map[digest.Digest][]byte{digest.FromBytes(layer2): layer2}
	t.Run("a new tag upstream is seen after the TTL", func(t *testing.T) {
		if got := pullImage(t, m, "app", "latest", q, nil); got != d1 {
			t.Fatalf("within the TTL got %s, want the cached %s", got, d1)
		}
		time.Sleep(ttl)
		if got := pullImage(t, m, "app", "latest", q, blobs2); got != d2 {
			t.Fatalf("after the TTL got %s, want the new %s", got, d2)
		}
	})
	t.Run("the image gone upstream: cached copy served", func(t *testing.T) {
		up.push.expect(up.push.do("DELETE", "/v2/app/manifests/"+d2.String(), nil), 202, "")
		time.Sleep(ttl)
		if got := pullImage(t, m, "app", "latest", q, blobs2); got != d2 {
			t.Fatalf("got %s, want the cached %s", got, d2)
		}
	})
	t.Run("upstream down: tag and digest pulls served from the cache", func(t *testing.T) {
		up.srv.Close()
		time.Sleep(ttl)
		if got := pullImage(t, m, "app", "latest", q, blobs2); got != d2 {
			t.Fatalf("by tag got %s, want %s", got, d2)
		}
		pullImage(t, m, "app", d1.String(), q, blobs)
		m.expect(m.do("GET", "/v2/app/manifests/other"+q, nil), 503, "UNAVAILABLE")
	})
}

func TestMirrorOfflineOff(t *testing.T) {
	up := newUpstream(t, "", "")
	config, layer := []byte(`{"v":2}`), randomBytes(100)
	d := up.push.pushImage("app", "1", config, layer)
	off := false
	mirrors, _ := newMirrors(t, 1, mirror.Config{TagTTL: mirror.Duration{Duration: time.Millisecond}, Offline: &off,
		Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)
	m, q := mirrors[0], "?ns="+up.host()
	pullImage(t, m, "app", "1", q, nil)
	up.srv.Close()
	time.Sleep(2 * time.Millisecond)
	m.expect(m.do("GET", "/v2/app/manifests/1"+q, nil), 503, "UNAVAILABLE")
	// Digests never expire: offline or not, a cached one is served.
	m.expect(m.do("GET", "/v2/app/manifests/"+d.String()+q, nil), 200, "")
}

func TestMirrorCredentialsNeverLeak(t *testing.T) {
	const user, pass = "mirror-user", "s3cret-upstream-password"
	up := newUpstream(t, user, pass)
	config, layer := []byte(`{"v":3}`), randomBytes(100)
	up.push.pushImage("private/app", "1", config, layer)
	dir := t.TempDir()
	for name, v := range map[string]string{"username": user, "password": pass + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	t.Run("with the Secret's credentials", func(t *testing.T) {
		mirrors, _ := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url,
			UsernameFile: filepath.Join(dir, "username"), PasswordFile: filepath.Join(dir, "password")}}}, &logs)
		pullImage(t, mirrors[0], "private/app", "1", "?ns="+up.host(), map[digest.Digest][]byte{digest.FromBytes(layer): layer})
	})
	t.Run("without: refused upstream, 503 here", func(t *testing.T) {
		mirrors, _ := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, &logs)
		resp := mirrors[0].do("GET", "/v2/private/app/manifests/1?ns="+up.host(), nil)
		mirrors[0].expect(resp, 503, "UNAVAILABLE")
		if bytes.Contains(resp.body, []byte(pass)) {
			t.Fatal("the upstream password is in a response")
		}
	})
	if strings.Contains(logs.String(), pass) {
		t.Fatal("the upstream password is in the logs")
	}
}

func TestMirrorNeverStoresUnverifiedBytes(t *testing.T) {
	up := newUpstream(t, "", "")
	config, layer := []byte(`{"v":4}`), randomBytes(64<<10)
	up.push.pushImage("app", "1", config, layer)
	up.lie = randomBytes(len(layer))
	mirrors, bucket := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)
	m, q := mirrors[0], "?ns="+up.host()
	m.expect(m.do("GET", "/v2/app/manifests/1"+q, nil), 200, "")
	d := digest.FromBytes(layer)
	req, _ := http.NewRequestWithContext(t.Context(), "GET", m.url+"/v2/app/blobs/"+d.String()+q, nil)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		var buf bytes.Buffer
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("the first client got %d bytes of content that does not verify, and a complete response (%d)", buf.Len(), resp.StatusCode)
		}
	}
	if got := keys(t, bucket, storage.BlobKey(d)); len(got) != 0 {
		t.Fatalf("unverified bytes stored under the digest: %v", got)
	}
	// Once the upstream tells the truth, the next pull stores the blob.
	up.mu.Lock()
	up.lie = nil
	up.mu.Unlock()
	pullImage(t, m, "app", "1", q, map[digest.Digest][]byte{d: layer})
}

// TestMirrorFetchOutlivesTheFirstClient: the client whose request started
// an upstream fetch hangs up early; the fetch goes on, and a client asking
// meanwhile gets the blob from it, without a second upstream GET.
func TestMirrorFetchOutlivesTheFirstClient(t *testing.T) {
	up := newUpstream(t, "", "")
	config, layer := []byte(`{"v":5}`), randomBytes(2<<20)
	up.push.pushImage("app", "1", config, layer)
	up.pace = time.Millisecond // about 64 writes of 32 KiB: 64 ms and more
	mirrors, bucket := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)
	m, q := mirrors[0], "?ns="+up.host()
	d := digest.FromBytes(layer)

	ctx, hangUp := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", m.url+"/v2/app/blobs/"+d.String()+q, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	hangUp()
	resp.Body.Close()

	second := m.do("GET", "/v2/app/blobs/"+d.String()+q, nil)
	m.expect(second, http.StatusOK, "")
	if !bytes.Equal(second.body, layer) {
		t.Fatalf("second client got %d bytes, not the blob", len(second.body))
	}
	if got := up.count("GET blobs"); got != 1 {
		t.Fatalf("upstream blob GETs: %d, want 1", got)
	}
	if len(keys(t, bucket, storage.BlobKey(d))) != 1 {
		t.Fatal("the blob was not stored")
	}
}

// TestMirrorTagCheckOutlivesItsLeader: requests for one tag share one
// upstream HEAD; when the request leading it goes away, the others still
// get their answer.
func TestMirrorTagCheckOutlivesItsLeader(t *testing.T) {
	up := newUpstream(t, "", "")
	d := up.push.pushImage("app", "1", []byte(`{"v":6}`), randomBytes(100))
	up.headDelay = 300 * time.Millisecond
	mirrors, _ := newMirrors(t, 1, mirror.Config{Upstreams: []mirror.Upstream{{Host: up.host(), Endpoint: up.url}}}, nil)
	m, q := mirrors[0], "?ns="+up.host()

	ctx, hangUp := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer hangUp()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", m.url+"/v2/app/manifests/1"+q, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(30 * time.Millisecond)
	resp := m.do("GET", "/v2/app/manifests/1"+q, nil)
	m.expect(resp, http.StatusOK, "")
	if resp.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("got %s, want %s", resp.header.Get("Docker-Content-Digest"), d)
	}
}
