package generated

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// TestKustomizeBasesApply renders the kustomize bases with the real kubectl
// and has a real API server accept them (server-side dry run), so
// `kubectl apply -k config/default` and the samples work as documented.
func TestKustomizeBasesApply(t *testing.T) {
	_, run := startAPIServer(t)
	root := testenv.RepoRoot()
	rendered := run("", true, "kustomize", filepath.Join(root, "config", "default"))
	for _, want := range []string{"kind: Deployment", "name: stevedore-operator", "name: stevedore-manager-role", "namespace: stevedore-system",
		"name: stevedore-metrics-reader", "name: stevedore-operator-metrics"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("config/default renders without %q", want)
		}
	}
	// Applied for real: the API server must accept every object, and the
	// samples need the CRDs to exist for their dry run.
	run(rendered, true, "apply", "--server-side", "-f", "-")
	// One sample per storage backend, each a Registry (with its
	// credentials Secret) the API server must accept.
	for file, want := range map[string]string{
		"stevedore_v1alpha1_registry.yaml":        "registry.stevedore.dev/dev",
		"stevedore_v1alpha1_registry_s3.yaml":     "registry.stevedore.dev/s3",
		"stevedore_v1alpha1_registry_azblob.yaml": "registry.stevedore.dev/azblob",
		"stevedore_v1alpha1_registry_gs.yaml":     "registry.stevedore.dev/gs",
		// And the kubernetes-auth sample, with its ServiceAccount and RBAC.
		"stevedore_v1alpha1_registry_kubernetes_auth.yaml": "rolebinding.rbac.authorization.k8s.io/registry-ci",
	} {
		samples, err := os.ReadFile(filepath.Join(root, "config", "samples", file))
		if err != nil {
			t.Fatal(err)
		}
		out := run(string(samples), true, "apply", "--dry-run=server", "-f", "-")
		if !strings.Contains(out, want) {
			t.Errorf("%s: dry run printed %q", file, out)
		}
	}
}
