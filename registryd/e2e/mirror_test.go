package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
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
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	stevedorev1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

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

// pushIndex writes idx to an OCI layout and copies it to ref with regctl
// over plain HTTP (logged in as id, when not nil), as a user pushes a
// multi-arch image; it returns the index's digest.
func pushIndex(t *testing.T, ref string, idx v1.ImageIndex, id *identity) v1.Hash {
	t.Helper()
	regctl := testutil.Client(t, "regctl")
	// Not t.TempDir: a subtest's name makes a path regctl's ocidir:// refuses.
	home, err := os.MkdirTemp("", "push")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	host, _, _ := strings.Cut(ref, "/")
	if id != nil {
		if out, err := regctlLogin(home, regctl, host, *id); err != nil {
			t.Fatalf("regctl login %s: %v\n%s", host, err, out)
		}
	} else {
		run(t, home, regctl, "registry", "set", "--tls", "disabled", "--skip-check", host)
	}
	dir := filepath.Join(home, "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: "src"})); err != nil {
		t.Fatal(err)
	}
	run(t, home, regctl, "image", "copy", "ocidir://"+dir+":src", ref)
	want, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(t, home, regctl, "image", "digest", ref)); got != want.String() {
		t.Fatalf("%s is %s after the push, want %s", ref, got, want)
	}
	return want
}

// indexBlobs is every blob of idx's images (configs and layers).
func indexBlobs(t *testing.T, idx v1.ImageIndex) map[string]bool {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string]bool{}
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfgName, _ := img.ConfigName()
		blobs[cfgName.String()] = true
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			blobs[d.String()] = true
		}
	}
	return blobs
}

// TestMirror runs a pull-through cache of three registryd replicas over
// one bucket in front of two distribution registries (v3.1.2; one asks
// for credentials, which the mirror reads from files), pulled from by
// containerd with a hosts.toml and by go-containerregistry sending ?ns=
// as containerd does. What the upstreams served is read from their
// access logs.
func TestMirror(t *testing.T) {
	t.Parallel()
	// No drain delay: the processes stop one after another at the end.
	fast := []string{"--shutdown-delay", "0s"}
	pub := startDistribution(t, distributionOptions{})
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswdFile(t, htpasswd, alice)
	priv := startDistribution(t, distributionOptions{htpasswd: htpasswd})
	creds := t.TempDir()
	for f, v := range map[string]string{"username": alice.user, "password": alice.pass} {
		if err := os.WriteFile(filepath.Join(creds, f), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const ttl = 2 * time.Second
	cfg, _ := json.Marshal(map[string]any{"tagTTL": ttl.String(), "upstreams": []map[string]any{
		{"host": pub.host, "endpoint": "http://" + pub.host},
		{"host": priv.host, "endpoint": "http://" + priv.host,
			"usernameFile": filepath.Join(creds, "username"), "passwordFile": filepath.Join(creds, "password")},
	}})
	bucket := "file://" + t.TempDir()
	var mirrors []*registry
	for range 3 {
		mirrors = append(mirrors, startRegistryd(t, bucket, append([]string{"--mirror", string(cfg)}, fast...)...))
	}
	ctrd, haveCtrd := startContainerd(t)

	idx := multiArch(t)
	want := pushIndex(t, pub.host+"/x:1", idx, nil)
	ref := pub.host + "/x:1"
	blobs := indexBlobs(t, idx)
	// Every request containerd made itself carries its User-Agent: none
	// may reach an upstream, all go through the mirror.
	notFromContainerd := func(t *testing.T, d *distribution) {
		t.Helper()
		for _, r := range d.requests(t) {
			if strings.Contains(r.userAgent, "containerd") {
				t.Errorf("containerd went to the upstream %s: %s %s (%s)", d.host, r.method, r.path, r.userAgent)
			}
		}
	}

	t.Run("10 concurrent pulls over 3 replicas fetch each blob once", func(t *testing.T) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			wg.Go(func() {
				m := mirrors[i%3]
				if haveCtrd && i < 3 {
					// One containerd pull through each replica, each in a
					// namespace of its own (its own image and leases).
					errs <- ctrd.pull(t.Context(), fmt.Sprintf("cold-%d", i), ref, want, m.host, pub.host)
					return
				}
				got, err := pullAll(t.Context(), ref, m.host)
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
		elapsed := time.Since(start)
		// The access log has a request once its response is complete.
		var gets map[string]int
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if gets = pub.count(t, 0, "GET", "/blobs/"); len(gets) >= len(blobs) || time.Now().After(deadline) {
				break
			}
		}
		if len(gets) != len(blobs) {
			t.Errorf("upstream blob GETs for %d distinct blobs, want %d: %v", len(gets), len(blobs), gets)
		}
		for k, n := range gets {
			if n != 1 {
				t.Errorf("%s: %d times, want once", k, n)
			}
		}
		for k, n := range pub.count(t, 0, "GET", "/manifests/") {
			if n != 1 || strings.HasSuffix(k, "/1") {
				t.Errorf("%s: %d times; manifests are fetched once, by digest", k, n)
			}
		}
		notFromContainerd(t, pub)
		t.Logf("10 cold pulls (%d by containerd) of %d blobs through 3 replicas: %v; upstream blob GETs: %v",
			map[bool]int{true: 3}[haveCtrd], len(blobs), elapsed, gets)
	})

	t.Run("pull by path form with crane", func(t *testing.T) {
		crane := testutil.Client(t, "crane")
		home := t.TempDir()
		pathRef := mirrors[1].host + "/" + strings.ReplaceAll(pub.host, ":", "_") + "/x:1"
		if got := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", pathRef)); got != want.String() {
			t.Fatalf("crane digest %s, want %s", got, want)
		}
		run(t, home, crane, "pull", "--insecure", "--platform", "linux/arm64", pathRef, filepath.Join(home, "x.tar"))
		// Pushes into the mirrored namespace are refused.
		cmd := exec.CommandContext(t.Context(), crane, "copy", "--insecure", pathRef, mirrors[1].host+"/"+strings.ReplaceAll(pub.host, ":", "_")+"/evil:1")
		cmd.Env = append(os.Environ(), "HOME="+home)
		if out, err := cmd.CombinedOutput(); err == nil || !says403.Match(out) {
			t.Fatalf("crane copy into a mirrored namespace: %v\n%s", err, out)
		}
	})

	t.Run("two upstreams behind one endpoint, selected by ns, same image name", func(t *testing.T) {
		// The same name x:1 upstream in both; the second asks for credentials.
		pwant := pushIndex(t, priv.host+"/x:1", multiArch(t), &alice)
		if got, err := pullAll(t.Context(), priv.host+"/x:1", mirrors[2].host); err != nil || got != pwant {
			t.Fatalf("%s/x:1 through the mirror: %v %v, want %s", priv.host, got, err, pwant)
		}
		if got, err := pullAll(t.Context(), pub.host+"/x:1", mirrors[2].host); err != nil || got != want {
			t.Fatalf("%s/x:1 through the mirror: %v %v, want %s", pub.host, got, err, want)
		}
		if haveCtrd {
			if err := ctrd.pull(t.Context(), "second", priv.host+"/x:1", pwant, mirrors[2].host, priv.host); err != nil {
				t.Fatal(err)
			}
			notFromContainerd(t, priv)
		}
	})

	var lastCheck time.Time
	t.Run("a moved tag upstream is served cached within the TTL, then seen, checked with a HEAD", func(t *testing.T) {
		// pullUntil pulls the tag through a replica until the upstream's
		// log has a HEAD of it from index mark on (the mirror re-checked
		// it), and the index pulled is want; it returns when the last
		// pull without a re-check began: the check was after that.
		pullUntil := func(mark int, want v1.Hash, others ...v1.Hash) (checkedAfter time.Time) {
			t.Helper()
			start := time.Now()
			for i := 0; ; i++ {
				begun := time.Now()
				got, err := pullAll(t.Context(), ref, mirrors[i%3].host)
				if err != nil {
					t.Fatal(err)
				}
				if got != want && !slices.Contains(others, got) {
					t.Fatalf("pulled %s, want %s or one of %v", got, want, others)
				}
				if got == want && len(pub.count(t, mark, "HEAD", "/manifests/1")) > 0 {
					return checkedAfter
				}
				checkedAfter = begun
				if time.Since(start) > ttl+10*time.Second {
					t.Fatalf("still %s %v on, TTL %v", got, time.Since(start), ttl)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		// The tag is fresh from a re-check on: from then on for the TTL,
		// the mirror does not ask, and serves what it has.
		checked := pullUntil(len(pub.requests(t)), want)
		nwant := pushIndex(t, pub.host+"/x:1", multiArch(t), nil)
		mark, marked := len(pub.requests(t)), time.Now()
		got, err := pullAll(t.Context(), ref, mirrors[1].host)
		if within := time.Since(checked) < ttl; err != nil || (within && got != want) {
			t.Fatalf("within the TTL: %v %v, want the cached %s", got, err, want)
		} else if !within {
			t.Logf("the push took longer than the TTL (%v): the cached tag was not observed", ttl)
		}
		start := time.Now()
		pullUntil(mark, nwant, want)
		lastCheck = time.Now()
		t.Logf("the moved tag was served %v after the push (TTL %v)", time.Since(start), ttl)
		// One re-check per TTL at most, on all replicas together: one in
		// all when the pulls since the push fit in one TTL, more only on a
		// machine slow enough that they did not (seen under load: 2 HEADs
		// over pulls that took longer than 2 TTLs).
		elapsed := time.Since(marked)
		heads := pub.count(t, mark, "HEAD", "/manifests/1")
		if n := heads["HEAD /v2/x/manifests/1"]; len(heads) != 1 || n < 1 || n > 1+int(elapsed/ttl) {
			t.Fatalf("tag re-checks: %v in %v, want one HEAD, at most one per TTL (%v)", heads, elapsed, ttl)
		}
		if gets := pub.count(t, mark, "GET", "/manifests/1"); len(gets) != 0 {
			t.Fatalf("the tag was fetched with GET: %v", gets)
		}
		want = nwant
	})

	t.Run("upstream down: cached pulls by tag and by digest", func(t *testing.T) {
		pub.stop(t)
		// Past the TTL, each pull by tag asks the upstream first, in vain.
		time.Sleep(time.Until(lastCheck.Add(ttl)))
		for i, m := range mirrors {
			if got, err := pullAll(t.Context(), ref, m.host); err != nil || got != want {
				t.Fatalf("replica %d by tag: %v %v, want %s", i, got, err, want)
			}
			if got, err := pullAll(t.Context(), pub.host+"/x@"+want.String(), m.host); err != nil || got != want {
				t.Fatalf("replica %d by digest: %v %v", i, got, err)
			}
		}
		// With the upstream gone, only the mirror can have served these.
		if haveCtrd {
			for _, r := range []string{ref, pub.host + "/x@" + want.String()} {
				if err := ctrd.pull(t.Context(), "offline", r, want, mirrors[1].host, pub.host); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// containerd is a containerd daemon of the test's own (root, state,
// socket and hosts dirs in a temp dir, CRI off).
type containerd struct {
	ctr, sock, dir string
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
		t.Log("skipping the containerd pulls: needs root and containerd, ctr")
		return nil, false
	}
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c := &containerd{ctr: ctr, sock: filepath.Join(dir, "c.sock"), dir: dir}
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

// pull runs `ctr images pull` of ref (linux/amd64) in namespace ns, with a
// hosts dir of its own naming mirror as the mirror of upstream (plain
// HTTP both), and checks the image's digest is want.
func (c *containerd) pull(ctx context.Context, ns, ref string, want v1.Hash, mirror, upstream string) error {
	hostsDir := filepath.Join(c.dir, "certs.d-"+strings.ReplaceAll(mirror, ":", "_"))
	if err := os.MkdirAll(filepath.Join(hostsDir, upstream), 0o755); err != nil {
		return err
	}
	// The file the operator gives in status.mirror.
	reg := &stevedorev1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cache"}}
	hosts := controllers.HostsTOML(reg, stevedorev1.MirrorUpstream{Host: upstream, Endpoint: "http://" + upstream}, "http://"+mirror)
	if err := os.WriteFile(filepath.Join(hostsDir, upstream, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.ctr, "--address", c.sock, "-n", ns, "images", "pull",
		"--hosts-dir", hostsDir, "--platform", "linux/amd64", "--snapshotter", "native", ref).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images pull %s through %s: %w\n%s", ref, mirror, err, out)
	}
	// ctr images ls -q lists names; check prints each with its target.
	ls, err := exec.CommandContext(ctx, c.ctr, "--address", c.sock, "-n", ns, "images", "ls").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images ls: %w\n%s", err, ls)
	}
	for _, line := range strings.Split(string(ls), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref {
			if f[2] != want.String() {
				return fmt.Errorf("containerd pulled %s as %s, want %s", ref, f[2], want)
			}
			return nil
		}
	}
	return fmt.Errorf("ctr images ls has no %s:\n%s", ref, ls)
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
// from a distribution upstream directly, through a cold mirror and from
// its warm cache (all processes on this machine, file storage), in
// $MIRROR_BENCH_ROUNDS rounds [3], each with a cold bucket, and reports
// the medians. Skipped unless set; hack/bench.sh runs it (make bench).
func TestMirrorThroughput(t *testing.T) {
	mib := os.Getenv("MIRROR_BENCH_MIB")
	if mib == "" {
		t.Skip("set MIRROR_BENCH_MIB")
	}
	var n int
	if _, err := fmt.Sscan(mib, &n); err != nil || n <= 0 {
		t.Fatalf("MIRROR_BENCH_MIB=%q", mib)
	}
	rounds := 3
	if v := os.Getenv("MIRROR_BENCH_ROUNDS"); v != "" {
		if _, err := fmt.Sscan(v, &rounds); err != nil || rounds <= 0 {
			t.Fatalf("MIRROR_BENCH_ROUNDS=%q", v)
		}
	}
	up := startDistribution(t, distributionOptions{})
	cfg, _ := json.Marshal(map[string]any{"upstreams": []map[string]any{{"host": up.host, "endpoint": "http://" + up.host}}})

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
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://"+up.host+"/v2/bench/blobs/uploads/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting the upload: %v %v", resp, err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequestWithContext(t.Context(), "PUT", (&url.URL{Scheme: "http", Host: up.host}).ResolveReference(loc).String(), f)
	req.ContentLength = int64(n) << 20
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
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
	var direct, cold, warm []float64
	for range rounds {
		m := startRegistryd(t, "file://"+t.TempDir(), "--mirror", string(cfg), "--shutdown-delay", "0s")
		direct = append(direct, pull("http://"+up.host+"/v2/bench/blobs/"+d))
		cold = append(cold, pull(m.url()+"/v2/bench/blobs/"+d+"?ns="+up.host))
		warm = append(warm, pull(m.url()+"/v2/bench/blobs/"+d+"?ns="+up.host))
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	dm, cm, wm := median(direct), median(cold), median(warm)
	t.Logf("%d MiB, median of %d: direct %.0f MiB/s, cold mirror %.0f MiB/s (%.0f%%), warm mirror %.0f MiB/s (%.0f%%)",
		n, rounds, dm, cm, 100*cm/dm, wm, 100*wm/dm)
}

func digestWriter() hash.Hash { return sha256.New() }
