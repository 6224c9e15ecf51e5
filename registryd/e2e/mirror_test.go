package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stevedorev1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// countingProxy stands in front of an upstream registry and counts what
// the mirror asks it, by method and path; closing it is the upstream
// going down (connections refused).
type countingProxy struct {
	srv    *httptest.Server
	mu     sync.Mutex
	counts map[string]int
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &countingProxy{counts: map[string]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.counts[r.Method+" "+r.URL.Path]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *countingProxy) host() string { return strings.TrimPrefix(p.srv.URL, "http://") }

// matching returns the counts of requests with method whose path holds part.
func (p *countingProxy) matching(method, part string) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, n := range p.counts {
		if strings.HasPrefix(k, method+" ") && strings.Contains(k, part) {
			out[k] = n
		}
	}
	return out
}

func (p *countingProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.counts)
}

// multiArch is an index of two random images (linux/amd64, linux/arm64),
// each with two layers of real tar content.
func multiArch(t *testing.T) v1.ImageIndex {
	t.Helper()
	idx := v1.ImageIndex(empty.Index)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(256<<10, 2)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx
}

// nsTransport sends a client's requests for any registry to mirror, with
// the registry's host as ?ns=, as containerd does for a hosts.toml mirror.
type nsTransport struct{ mirror string }

func (n nsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if r.URL.Path != "/v2/" {
		q := r.URL.Query()
		q.Set("ns", r.URL.Host)
		r.URL.RawQuery = q.Encode()
	}
	r.URL.Scheme, r.URL.Host, r.Host = "http", n.mirror, n.mirror
	return http.DefaultTransport.RoundTrip(r)
}

// pullAll pulls ref's index, every image in it and every blob of those
// through mirror with ?ns= (go-containerregistry verifies each digest)
// and returns the index digest.
func pullAll(ctx context.Context, ref, mirror string) (v1.Hash, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	idx, err := remote.Index(r, remote.WithTransport(nsTransport{mirror}), remote.WithContext(ctx))
	if err != nil {
		return v1.Hash{}, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return v1.Hash{}, err
		}
		if _, err := img.RawConfigFile(); err != nil {
			return v1.Hash{}, err
		}
		layers, err := img.Layers()
		if err != nil {
			return v1.Hash{}, err
		}
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				return v1.Hash{}, err
			}
			_, err = io.Copy(io.Discard, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return v1.Hash{}, err
			}
		}
	}
	return idx.Digest()
}

func mustPush(t *testing.T, ref string, idx v1.ImageIndex, auth authn.Authenticator) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithAuth(auth), remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	return d
}

// TestMirror runs a pull-through cache of three registryd replicas over
// one bucket, mirroring two upstream registryd processes (one with
// htpasswd, reached with credentials from files) behind counting proxies.
func TestMirror(t *testing.T) {
	t.Parallel()
	// No drain delay: five processes stop one after another at the end.
	fast := []string{"--shutdown-delay", "0s"}
	upstream := startRegistryd(t, "file://"+t.TempDir(), fast...)
	private, _ := startHtpasswdRegistry(t, fast...)
	pub, priv := newCountingProxy(t, upstream.url()), newCountingProxy(t, private.url())
	creds := t.TempDir()
	for f, v := range map[string]string{"username": alice.user, "password": alice.pass} {
		if err := os.WriteFile(filepath.Join(creds, f), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const ttl = 2 * time.Second
	cfg, _ := json.Marshal(map[string]any{"tagTTL": ttl.String(), "upstreams": []map[string]any{
		{"host": pub.host(), "endpoint": pub.srv.URL},
		{"host": priv.host(), "endpoint": priv.srv.URL,
			"usernameFile": filepath.Join(creds, "username"), "passwordFile": filepath.Join(creds, "password")},
	}})
	bucket := "file://" + t.TempDir()
	var mirrors []*registry
	for range 3 {
		mirrors = append(mirrors, startRegistryd(t, bucket, append([]string{"--mirror", string(cfg)}, fast...)...))
	}

	idx := multiArch(t)
	want := mustPush(t, upstream.host+"/x:1", idx, authn.Anonymous)
	ref := pub.host() + "/x:1"
	im, _ := idx.IndexManifest()
	blobs := map[string]bool{}
	for _, desc := range im.Manifests {
		img, _ := idx.Image(desc.Digest)
		cfgName, _ := img.ConfigName()
		blobs[cfgName.String()] = true
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			blobs[d.String()] = true
		}
	}

	t.Run("10 concurrent pulls over 3 replicas fetch each blob once", func(t *testing.T) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			wg.Go(func() {
				got, err := pullAll(t.Context(), ref, mirrors[i%3].host)
				if err == nil && got != want {
					err = fmt.Errorf("pulled index %s, upstream has %s", got, want)
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		gets := pub.matching("GET", "/blobs/")
		if len(gets) != len(blobs) {
			t.Errorf("upstream blob GETs for %d distinct blobs, want %d: %v", len(gets), len(blobs), gets)
		}
		for k, n := range gets {
			if n != 1 {
				t.Errorf("%s: %d times, want once", k, n)
			}
		}
		for k, n := range pub.matching("GET", "/manifests/") {
			if n != 1 || strings.HasSuffix(k, ":1") || strings.HasSuffix(k, "/1") {
				t.Errorf("%s: %d times; manifests are fetched once, by digest", k, n)
			}
		}
		t.Logf("10 cold pulls of %d blobs through 3 replicas: %v", len(blobs), time.Since(start))
	})

	t.Run("pull by path form with crane", func(t *testing.T) {
		crane := testutil.Client(t, "crane")
		home := t.TempDir()
		pathRef := mirrors[1].host + "/" + strings.ReplaceAll(pub.host(), ":", "_") + "/x:1"
		if got := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", pathRef)); got != want.String() {
			t.Fatalf("crane digest %s, want %s", got, want)
		}
		run(t, home, crane, "pull", "--insecure", "--platform", "linux/arm64", pathRef, filepath.Join(home, "x.tar"))
		// Pushes into the mirrored namespace are refused.
		cmd := exec.CommandContext(t.Context(), crane, "copy", "--insecure", pathRef, mirrors[1].host+"/"+strings.ReplaceAll(pub.host(), ":", "_")+"/evil:1")
		cmd.Env = append(os.Environ(), "HOME="+home)
		if out, err := cmd.CombinedOutput(); err == nil || !says403.Match(out) {
			t.Fatalf("crane copy into a mirrored namespace: %v\n%s", err, out)
		}
	})

	t.Run("second upstream with credentials, selected by ns", func(t *testing.T) {
		pidx := multiArch(t)
		pwant := mustPush(t, private.host+"/team/secret:2", pidx, &authn.Basic{Username: alice.user, Password: alice.pass})
		got, err := pullAll(t.Context(), priv.host()+"/team/secret:2", mirrors[2].host)
		if err != nil || got != pwant {
			t.Fatalf("pull through the mirror of the private upstream: %v %v, want %s", got, err, pwant)
		}
	})

	t.Run("a new tag upstream is seen after the TTL, checked with a HEAD", func(t *testing.T) {
		next := multiArch(t)
		nwant := mustPush(t, upstream.host+"/x:1", next, authn.Anonymous)
		pub.reset()
		if got, err := pullAll(t.Context(), ref, mirrors[0].host); err != nil || got != want {
			// Only when the first subtest took longer than the TTL.
			t.Logf("within the TTL: %v %v", got, err)
		}
		time.Sleep(ttl)
		pub.reset()
		got, err := pullAll(t.Context(), ref, mirrors[0].host)
		if err != nil || got != nwant {
			t.Fatalf("after the TTL: %v %v, want %s", got, err, nwant)
		}
		if heads := pub.matching("HEAD", "/manifests/1"); len(heads) != 1 {
			t.Fatalf("tag re-checks: %v, want one HEAD", heads)
		}
		if gets := pub.matching("GET", "/manifests/1"); len(gets) != 0 {
			t.Fatalf("the tag was fetched with GET: %v", gets)
		}
		want = nwant
	})

	t.Run("upstream down: cached pulls by tag and by digest", func(t *testing.T) {
		pub.srv.Close()
		time.Sleep(ttl)
		for i, m := range mirrors {
			if got, err := pullAll(t.Context(), ref, m.host); err != nil || got != want {
				t.Fatalf("replica %d by tag: %v %v, want %s", i, got, err, want)
			}
			if got, err := pullAll(t.Context(), pub.host()+"/x@"+want.String(), m.host); err != nil || got != want {
				t.Fatalf("replica %d by digest: %v %v", i, got, err)
			}
		}
		// With the upstream gone, only the mirror can have served it.
		if c, ok := startContainerd(t); ok {
			c.pull(t, ref, mirrors[0].host, pub.host())
		}
	})
}

// containerd is a containerd daemon of the test's own (root, state,
// socket and certs.d in a temp dir, CRI off).
type containerd struct {
	ctr, sock, certsD string
}

// startContainerd runs containerd as root; false (test skipped part)
// when not root or not installed, outside CI.
func startContainerd(t *testing.T) (*containerd, bool) {
	t.Helper()
	bin, err := exec.LookPath("containerd")
	ctr, cerr := exec.LookPath("ctr")
	if err != nil || cerr != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("containerd pull needs root and containerd/ctr on PATH (%v, %v)", err, cerr)
		}
		t.Log("skipping the containerd pull: needs root and containerd, ctr")
		return nil, false
	}
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c := &containerd{ctr: ctr, sock: filepath.Join(dir, "c.sock"), certsD: filepath.Join(dir, "certs.d")}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, _ := os.Create(filepath.Join(dir, "containerd.log"))
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Logf("containerd log (tail):\n%s", tail(string(b), 3000))
		}
	})
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if exec.Command(ctr, "--address", c.sock, "version").Run() == nil {
			return c, true
		}
	}
	t.Fatal("containerd did not start")
	return nil, false
}

// pull runs `ctr images pull` of ref with a hosts.toml naming mirror as
// the mirror of upstream (plain HTTP both).
func (c *containerd) pull(t *testing.T, ref, mirror, upstream string) {
	t.Helper()
	dir := filepath.Join(c.certsD, upstream)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The file the operator gives in status.mirror.
	reg := &stevedorev1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cache"}}
	hosts := controllers.HostsTOML(reg, stevedorev1.MirrorUpstream{Host: upstream, Endpoint: "http://" + upstream}, "http://"+mirror)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.ctr, "--address", c.sock, "-n", "mirror-e2e", "images", "pull",
		"--hosts-dir", c.certsD, "--platform", "linux/amd64", "--snapshotter", "native", ref).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images pull %s: %v\n%s", ref, err, out)
	}
	t.Logf("ctr images pull %s through %s: ok", ref, mirror)
}

// TestMirrorRepositories: in kubernetes mode, what the mirror caches shows
// up as Repositories named after where it came from, pulled by tag (with
// the tag in its status) or by digest only.
func TestMirrorRepositories(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	const ns, registryName = "mirror", "cache"
	if err := env.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(t.Context(), &stevedorev1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: registryName},
		Spec: stevedorev1.RegistrySpec{Storage: stevedorev1.StorageSpec{URL: "mem://"}}}); err != nil {
		t.Fatal(err)
	}
	fast := []string{"--shutdown-delay", "0s"}
	upstream := startRegistryd(t, "file://"+t.TempDir(), fast...)
	cfg, _ := json.Marshal(map[string]any{"upstreams": []map[string]any{{"host": "docker.io", "endpoint": upstream.url()}}})
	m := startRegistryd(t, "file://"+t.TempDir(), append([]string{"--mirror", string(cfg), "--registry", registryName, "--namespace", ns,
		"--kubeconfig", kube.kubeconfig}, fast...)...)

	byTag := mustPush(t, upstream.host+"/library/alpine:3", multiArch(t), authn.Anonymous)
	byDigest := mustPush(t, upstream.host+"/team/tool:1", multiArch(t), authn.Anonymous)
	// containerd's names: docker.io/alpine:3 is library/alpine upstream.
	nsClient := func(ref string) (v1.Hash, error) {
		r, err := name.ParseReference(ref)
		if err != nil {
			return v1.Hash{}, err
		}
		idx, err := remote.Index(r, remote.WithTransport(nsTransport{m.host}), remote.WithContext(t.Context()))
		if err != nil {
			return v1.Hash{}, err
		}
		return idx.Digest()
	}
	if got, err := nsClient("docker.io/alpine:3"); err != nil || got != byTag {
		t.Fatalf("pull by tag: %v %v, want %s", got, err, byTag)
	}
	if got, err := nsClient("docker.io/team/tool@" + byDigest.String()); err != nil || got != byDigest {
		t.Fatalf("pull by digest: %v %v, want %s", got, err, byDigest)
	}
	for _, tc := range []struct {
		path, tag string
	}{
		{"docker.io/library/alpine", "3"},
		{"docker.io/team/tool", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			var repo stevedorev1.Repository
			key := client.ObjectKey{Namespace: ns, Name: stevedorev1.RepositoryObjectName(registryName, tc.path)}
			deadline := time.Now().Add(10 * time.Second)
			for {
				err := env.Client.Get(t.Context(), key, &repo)
				if err == nil && (tc.tag == "" || slices.ContainsFunc(repo.Status.Tags, func(s stevedorev1.TagStatus) bool { return s.Name == tc.tag })) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("Repository %s: %v, tags %+v", key.Name, err, repo.Status.Tags)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if repo.Spec.Name != tc.path || repo.Spec.Registry != registryName {
				t.Fatalf("Repository spec %+v", repo.Spec)
			}
		})
	}
	t.Logf("kubectl get repositories:\n%s", kubectl(t, env, "get", "repositories", "-n", ns))
}

// TestMirrorThroughput measures one blob of $MIRROR_BENCH_MIB MiB pulled
// from the upstream directly, through a cold mirror and from its warm
// cache (all processes on this machine, file buckets). Skipped unless set.
func TestMirrorThroughput(t *testing.T) {
	mib := os.Getenv("MIRROR_BENCH_MIB")
	if mib == "" {
		t.Skip("set MIRROR_BENCH_MIB")
	}
	var n int
	if _, err := fmt.Sscan(mib, &n); err != nil || n <= 0 {
		t.Fatalf("MIRROR_BENCH_MIB=%q", mib)
	}
	fast := []string{"--shutdown-delay", "0s"}
	upstream := startRegistryd(t, "file://"+t.TempDir(), fast...)
	cfg, _ := json.Marshal(map[string]any{"upstreams": []map[string]any{{"host": upstream.host, "endpoint": upstream.url()}}})
	m := startRegistryd(t, "file://"+t.TempDir(), append([]string{"--mirror", string(cfg)}, fast...)...)

	// A blob of n MiB, pushed from a file so the test holds no copy.
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	h := digestWriter()
	chunk := make([]byte, 1<<20)
	for i := range n {
		for j := range chunk {
			chunk[j] = byte(i*31 + j*7)
		}
		_, _ = f.Write(chunk)
		_, _ = h.Write(chunk)
	}
	d := "sha256:" + fmt.Sprintf("%x", h.Sum(nil))
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "POST", upstream.url()+"/v2/bench/blobs/uploads/?digest="+d, f)
	req.ContentLength = int64(n) << 20
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	f.Close()

	pull := func(u string) float64 {
		start := time.Now()
		resp, err := http.Get(u)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", u, resp, err)
		}
		got, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got != int64(n)<<20 {
			t.Fatalf("GET %s: %d bytes", u, got)
		}
		return float64(got) / (1 << 20) / time.Since(start).Seconds()
	}
	direct := pull(upstream.url() + "/v2/bench/blobs/" + d)
	cold := pull(m.url() + "/v2/bench/blobs/" + d + "?ns=" + upstream.host)
	warm := pull(m.url() + "/v2/bench/blobs/" + d + "?ns=" + upstream.host)
	t.Logf("%d MiB: direct %.0f MiB/s, cold mirror %.0f MiB/s (%.0f%%), warm mirror %.0f MiB/s (%.0f%%)",
		n, direct, cold, 100*cold/direct, warm, 100*warm/direct)
}

func digestWriter() hash.Hash { return sha256.New() }
