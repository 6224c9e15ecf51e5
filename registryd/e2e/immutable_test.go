package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// immutableImage uploads a config and a layer of random bytes to base and
// returns a manifest naming them (not yet pushed) and its digest.
func immutableImage(t *testing.T, base, repo string) ([]byte, digest.Digest) {
	t.Helper()
	return randomImage(t, base, repo, 256)
}

// randomImage is immutableImage with a layer of layerBytes.
func randomImage(t *testing.T, base, repo string, layerBytes int) ([]byte, digest.Digest) {
	t.Helper()
	config, layer := make([]byte, 64), make([]byte, layerBytes)
	_, _ = rand.Read(config)
	_, _ = rand.Read(layer)
	for _, b := range [][]byte{config, layer} {
		if err := post(t.Context(), "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), b, "application/octet-stream", http.StatusCreated); err != nil {
			t.Error(err)
		}
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: 64},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(layerBytes)}}}
	m.SchemaVersion = 2
	body, _ := json.Marshal(m)
	return body, digest.FromBytes(body)
}

// send is one request; it answers the status and body.
func send(ctx context.Context, method, u string, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// wantDenied checks a 403 whose spec envelope says DENIED with detail.
func wantDenied(t *testing.T, what string, status int, body, detail string) {
	t.Helper()
	if status != http.StatusForbidden || !strings.Contains(body, `"code":"DENIED"`) || !strings.Contains(body, detail) {
		t.Errorf("%s: %d %s; want 403 DENIED containing %q", what, status, body, detail)
	}
}

// TestImmutableTagsAcrossReplicas: three registryd processes serve one
// Registry (envtest API server, one file bucket) whose spec.immutableTags
// covers release tags. 100 concurrent overwrites of a release tag from
// the three replicas: none succeeds. Racing first pushes of a new release
// tag: exactly one wins. Delete and push again, by tag or by digest: refused.
// A rule added to the Registry holds on the next push, without a restart.
// crane and oras show the refusal's message to their user.
func TestImmutableTagsAcrossReplicas(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ctx := t.Context()
	const ns, regName, repo, rule = "immutable", "reg", "team/app", "v[0-9]+([.][0-9]+)*"
	kubeRegistry(t, ns, regName, v1.RegistrySpec{ImmutableTags: []string{rule}})
	replicas := kubeReplicas(t, ns, regName, 3)
	base := func(i int) string { return replicas[i%3].url() }
	manifests := func(i int, ref string) string { return base(i) + "/v2/" + repo + "/manifests/" + ref }
	denial := fmt.Sprintf(`tag \"v1.0.0\" is immutable (rule \"%s\" of Registry %s)`, rule, regName)

	first, firstDigest := immutableImage(t, base(0), repo)
	if status, body, err := send(ctx, "PUT", manifests(0, "v1.0.0"), first); err != nil || status != http.StatusCreated {
		t.Fatalf("first push of v1.0.0: %d %s %v", status, body, err)
	}

	t.Run("100 concurrent overwrites", func(t *testing.T) {
		const n = 100
		images := make([][]byte, n)
		for i := range images {
			images[i], _ = immutableImage(t, base(i), repo)
		}
		var won, denied atomic.Int64
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				status, body, err := send(ctx, "PUT", manifests(i, "v1.0.0"), images[i])
				switch {
				case err != nil:
					t.Error(err)
				case status == http.StatusCreated:
					won.Add(1)
				case status == http.StatusForbidden && strings.Contains(body, denial):
					denied.Add(1)
				default:
					t.Errorf("overwrite: %d %s", status, body)
				}
			})
		}
		wg.Wait()
		t.Logf("%d overwrites from 3 replicas: %d succeeded, %d refused", n, won.Load(), denied.Load())
		if won.Load() != 0 || denied.Load() != n {
			t.Fatalf("%d succeeded, %d refused: want 0 and %d", won.Load(), denied.Load(), n)
		}
		for i := range 3 {
			wantTag(t, base(i), repo, "v1.0.0", firstDigest)
		}
	})

	t.Run("racing first pushes", func(t *testing.T) {
		const n = 30
		images := make([][]byte, n)
		digests := make([]digest.Digest, n)
		for i := range images {
			images[i], digests[i] = immutableImage(t, base(i), repo)
		}
		var won atomic.Int64
		var winner atomic.Value
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				status, body, err := send(ctx, "PUT", manifests(i, "v2.0.0"), images[i])
				switch {
				case err != nil:
					t.Error(err)
				case status == http.StatusCreated:
					won.Add(1)
					winner.Store(digests[i])
				case status != http.StatusForbidden:
					t.Errorf("first push: %d %s", status, body)
				}
			})
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Fatalf("%d racing first pushes of v2.0.0 succeeded, want 1", won.Load())
		}
		for i := range 3 {
			wantTag(t, base(i), repo, "v2.0.0", winner.Load().(digest.Digest))
		}
	})

	t.Run("delete and push again", func(t *testing.T) {
		status, body, _ := send(ctx, "DELETE", manifests(1, "v1.0.0"), nil)
		wantDenied(t, "DELETE by tag", status, body, `cannot be deleted`)
		status, body, _ = send(ctx, "DELETE", manifests(2, firstDigest.String()), nil)
		wantDenied(t, "DELETE by digest", status, body, `cannot be removed by deleting its manifest`)
		other, _ := immutableImage(t, base(0), repo)
		status, body, _ = send(ctx, "PUT", manifests(0, "v1.0.0"), other)
		wantDenied(t, "push again after the refused deletes", status, body, denial)
		for i := range 3 {
			wantTag(t, base(i), repo, "v1.0.0", firstDigest)
			if status, body, _ := send(ctx, "GET", manifests(i, firstDigest.String()), nil); status != http.StatusOK {
				t.Errorf("GET by digest after the refused DELETE: %d %s", status, body)
			}
		}
	})

	t.Run("rule added without a restart", func(t *testing.T) {
		a, _ := immutableImage(t, base(0), repo)
		b, _ := immutableImage(t, base(1), repo)
		if status, body, _ := send(ctx, "PUT", manifests(0, "stable"), a); status != http.StatusCreated {
			t.Fatalf("push stable: %d %s", status, body)
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var reg v1.Registry
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: regName}, &reg); err != nil {
				return err
			}
			reg.Spec.ImmutableTags = append(reg.Spec.ImmutableTags, "stable")
			return env.Client.Update(ctx, &reg)
		})
		if err != nil {
			t.Fatal(err)
		}
		// At once, on a replica whose cache may not have the change yet.
		status, body, _ := send(ctx, "PUT", manifests(1, "stable"), b)
		wantDenied(t, "moving stable right after the rule was added", status, body, `(rule \"stable\" of Registry reg)`)
	})

	t.Run("clients show the message", func(t *testing.T) {
		home := t.TempDir()
		layer := filepath.Join(home, "layer.tar")
		writeLayerTar(t, layer, map[string]string{"x.txt": "another release\n"})
		crane := testutil.Client(t, "crane")
		ref := replicas[2].host + "/" + repo + ":v1.0.0"
		out, err := try(home, "", crane, "append", "--insecure", "-f", layer, "-t", ref)
		if err == nil || !strings.Contains(out, `tag "v1.0.0" is immutable (rule "`+rule+`" of Registry reg)`) {
			t.Errorf("crane append over an immutable tag: err %v, output:\n%s", err, out)
		}
		out, err = try(home, "", crane, "delete", "--insecure", replicas[0].host+"/"+repo+"@"+firstDigest.String())
		if err == nil || !strings.Contains(out, "cannot be removed by deleting its manifest") {
			t.Errorf("crane delete of the manifest of an immutable tag: err %v, output:\n%s", err, out)
		}
		oras := testutil.Client(t, "oras")
		file := filepath.Join(home, "artifact.txt")
		if err := os.WriteFile(file, []byte("an artifact\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err = try(home, home, oras, "push", "--plain-http", replicas[1].host+"/"+repo+":v1.0.0", "artifact.txt")
		if err == nil || !strings.Contains(out, `tag "v1.0.0" is immutable`) {
			t.Errorf("oras push over an immutable tag: err %v, output:\n%s", err, out)
		}
	})
}

// wantTag checks that tag resolves to want on the replica at base.
func wantTag(t *testing.T, base, repo, tag string, want digest.Digest) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "HEAD", base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || got != want.String() {
		t.Errorf("%s: %s:%s is %d %s, want %s", base, repo, tag, resp.StatusCode, got, want)
	}
}
