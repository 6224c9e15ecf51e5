package generated

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// TestKustomizeBasesApply renders the kustomize bases with the real kubectl
// and has a real API server accept them (server-side dry run), so
// `kubectl apply -k config/default` and the samples work as documented.
func TestKustomizeBasesApply(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	kubeconfig, err := env.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(env.AssetsDir(), "kubectl")
	root := testenv.RepoRoot()
	run := func(stdin []byte, args ...string) string {
		t.Helper()
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	rendered := run(nil, "kustomize", filepath.Join(root, "config", "default"))
	for _, want := range []string{"kind: Deployment", "name: stevedore-operator", "name: stevedore-manager-role", "namespace: stevedore-system"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("config/default renders without %q", want)
		}
	}
	// Applied for real: the API server must accept every object, and the
	// samples need the CRDs to exist for their dry run.
	run([]byte(rendered), "apply", "--server-side", "-f", "-")
	samples, err := os.ReadFile(filepath.Join(root, "config", "samples", "stevedore_v1alpha1_registry.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := run(samples, "apply", "--dry-run=server", "-f", "-")
	if !strings.Contains(out, "registry.stevedore.dev/dev") {
		t.Errorf("sample dry run printed %q", out)
	}
}
