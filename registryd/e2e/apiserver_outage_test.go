package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/registryd/auth"
)

// TestAPIServerOutage: registryd as a Registry runs it (tags in Repository
// status, kubernetes auth) loses its API server for E2E_API_OUTAGE (10s in
// make test; `make test-outage` runs 60s). Meanwhile crane, logged in with
// a ServiceAccount token that pulled just before, keeps pulling by tag and
// by digest; a push gets 503 with Retry-After and writes nothing. When the
// API server is back the same process takes pushes again, and every tag
// from before is there.
func TestAPIServerOutage(t *testing.T) {
	t.Parallel()
	outage := 10 * time.Second
	if s := os.Getenv("E2E_API_OUTAGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("E2E_API_OUTAGE=%q: %v", s, err)
		}
		outage = d
	}
	env := kubeEnv(t)
	crane := testutil.Client(t, "crane")
	ctx := t.Context()
	ns := fmt.Sprintf("outage-%d", time.Now().UnixNano())
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}); err != nil {
		t.Fatal(err)
	}
	grant(t, env, ns, "ci-all", "ci", []string{"pull", "push", "list"}, "main")
	token := strings.TrimSpace(kubectl(t, env, "create", "token", "ci", "-n", ns, "--audience", auth.DefaultAudience(ns, "main")))

	// registryd reaches the API server through a proxy the test switches off.
	proxy, kubeconfig := proxiedKubeconfig(t, env)
	proxy.On()
	reg := startRegistryd(t, "file://"+t.TempDir(), "--registry", "main", "--namespace", ns, "--kubeconfig", kubeconfig,
		"--auth", "kubernetes")

	home := t.TempDir()
	if out, err := try(home, "", crane, "auth", "login", reg.host, "-u", "ci", "-p", token); err != nil { // try: run would log the token
		t.Fatalf("crane auth login: %v %s", err, out)
	}
	layer := filepath.Join(t.TempDir(), "layer.tar")
	writeLayerTar(t, layer, map[string]string{"outage.txt": "before the outage\n"})
	run(t, home, crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/team/app:v1")
	d := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", reg.host+"/team/app:v1"))
	run(t, home, crane, "pull", "--insecure", reg.host+"/team/app:v1", filepath.Join(t.TempDir(), "warm.tar"))

	manifest := []byte(run(t, home, crane, "manifest", "--insecure", reg.host+"/team/app:v1"))
	var mt struct{ MediaType string }
	if err := json.Unmarshal(manifest, &mt); err != nil {
		t.Fatal(err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:"+token))
	proxy.Off()
	start := time.Now()
	pulls, refused := 0, 0
	for time.Since(start) < outage {
		run(t, home, crane, "pull", "--insecure", reg.host+"/team/app:v1", filepath.Join(t.TempDir(), "tag.tar"))
		run(t, home, crane, "pull", "--insecure", reg.host+"/team/app@"+d, filepath.Join(t.TempDir(), "digest.tar"))
		pulls += 2
		resp := do(t, http.MethodPut, reg.url()+"/v2/team/app/manifests/during", manifest,
			map[string]string{"Content-Type": mt.MediaType, "Authorization": basic}, http.StatusServiceUnavailable)
		if resp.Header.Get("Retry-After") == "" {
			t.Fatal("a push during the outage: 503 without Retry-After")
		}
		refused++
		time.Sleep(time.Second)
	}
	t.Logf("API server unreachable for %v: %d pulls by tag and digest succeeded, %d pushes answered 503 with Retry-After",
		time.Since(start).Round(time.Second), pulls, refused)

	proxy.On()
	back := time.Now()
	for {
		if _, err := try(home, "", crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/team/app:v2"); err == nil {
			break
		}
		if time.Since(back) > 60*time.Second {
			t.Fatal("no push 60 s after the API server came back")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("pushes work again %v after the API server came back, no restart", time.Since(back).Round(100*time.Millisecond))
	tags := run(t, home, crane, "ls", "--insecure", reg.host+"/team/app")
	if tags != "v1\nv2\n" {
		t.Errorf("tags after the outage: %q, want v1 and v2 (and not the push refused during it)", tags)
	}
	var repo v1.Repository
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: v1.RepositoryObjectName("main", "team/app")}, &repo); err != nil {
		t.Fatal(err)
	}
	if got, ok := repo.Status.FindTag("v1"); !ok || got.Digest != d {
		t.Errorf("Repository status v1 = %+v, want %s", got, d)
	}
}
