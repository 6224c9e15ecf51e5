package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestStartsBeforeAPIServer starts registryd for a Registry while its API
// server cannot be reached: it serves, /readyz is 503 naming the API server
// and tag requests are 503; once the API server answers, /readyz turns 200
// and a push by tag works, with no restart.
func TestStartsBeforeAPIServer(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ctx := context.Background()
	ns := fmt.Sprintf("startup-%d", time.Now().UnixNano())
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns},
		Spec:       v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}},
	}); err != nil {
		t.Fatal(err)
	}
	// The package's kubeconfig, pointed at a proxy that is off.
	proxy, kubeconfig := proxiedKubeconfig(t, env)

	// Another loopback address: FreeAddr may hand registryd's port out again.
	debug := strings.Replace(testutil.FreeAddr(t), "127.0.0.1:", "127.0.0.2:", 1)
	reg := startRegistryd(t, "file://"+t.TempDir(), "--registry", "main", "--namespace", ns, "--kubeconfig", kubeconfig,
		"--auth", "none", "--debug-addr", debug)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + debug + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "API server") {
		t.Fatalf("/readyz without the API server: %d %s", code, body)
	}
	t.Logf("/readyz without the API server: %d %s", code, strings.TrimSpace(body))
	config := []byte("{}")
	do(t, http.MethodPost, reg.url()+"/v2/app/blobs/uploads/?digest="+digest.FromBytes(config).String(), config,
		map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[]}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, digest.FromBytes(config)))
	pushTag := func(want int) *http.Response {
		return do(t, http.MethodPut, reg.url()+"/v2/app/manifests/v1", manifest, map[string]string{"Content-Type": ocispec.MediaTypeImageManifest}, want)
	}
	if resp := pushTag(http.StatusServiceUnavailable); resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}

	proxy.On()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := readyz()
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz 30 s after the API server came: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pushTag(http.StatusCreated)
	do(t, http.MethodGet, reg.url()+"/v2/app/manifests/v1", nil, map[string]string{"Accept": ocispec.MediaTypeImageManifest}, http.StatusOK)
}

// proxiedKubeconfig is the package's kubeconfig pointed at a proxy to the
// API server that the test switches on and off (off to begin with).
func proxiedKubeconfig(t *testing.T, env *testenv.Env) (*testutil.SwitchProxy, string) {
	t.Helper()
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testutil.NewSwitchProxy(t, u.Host)
	kc, err := clientcmd.LoadFromFile(kube.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cluster := range kc.Clusters {
		cluster.Server = "https://" + proxy.Addr()
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return proxy, kubeconfig
}
