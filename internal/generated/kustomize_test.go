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
	for _, want := range []string{"kind: Deployment", "name: stevedore-operator", "name: stevedore-manager-role", "namespace: stevedore-system"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("config/default renders without %q", want)
		}
	}
	// Applied for real: the API server must accept every object, and the
	// samples need the CRDs to exist for their dry run.
	run(rendered, true, "apply", "--server-side", "-f", "-")
	samples, err := os.ReadFile(filepath.Join(root, "config", "samples", "stevedore_v1alpha1_registry.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := run(string(samples), true, "apply", "--dry-run=server", "-f", "-")
	if !strings.Contains(out, "registry.stevedore.dev/dev") {
		t.Errorf("sample dry run printed %q", out)
	}
}
