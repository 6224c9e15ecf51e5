// Package generated checks that the checked-in generated code (CRDs, RBAC,
// deepcopy) is what controller-gen makes from the current markers.
package generated

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// The same generator arguments as the Makefile's manifests and generate targets.
const (
	paths   = "paths=./api/...;./controllers/..."
	rbacArg = "rbac:roleName=manager-role"
)

func controllerGen(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("CONTROLLER_GEN")
	if bin == "" {
		t.Fatal("CONTROLLER_GEN is not set: run `make test`")
	}
	return bin
}

func run(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(controllerGen(t), args...)
	cmd.Dir = testenv.RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("controller-gen %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// compareDirs fails for every file controller-gen makes (in got) that
// differs from its checked-in copy in want; with exact, also for files in
// want that controller-gen no longer makes (a CRD whose type is gone).
func compareDirs(t *testing.T, want, got string, exact bool) {
	t.Helper()
	wantFiles, _ := filepath.Glob(filepath.Join(want, "*.yaml"))
	gotFiles, _ := filepath.Glob(filepath.Join(got, "*.yaml"))
	if exact && len(wantFiles) != len(gotFiles) {
		t.Errorf("%s holds %d files, controller-gen makes %d: run `make manifests`", want, len(wantFiles), len(gotFiles))
	}
	for _, g := range gotFiles {
		name := filepath.Base(g)
		fresh, _ := os.ReadFile(g)
		checkedIn, err := os.ReadFile(filepath.Join(want, name))
		if err != nil || !bytes.Equal(fresh, checkedIn) {
			t.Errorf("%s/%s is stale: run `make manifests` and commit", want, name)
		}
	}
}

func TestGeneratedFilesAreFresh(t *testing.T) {
	root := testenv.RepoRoot()
	t.Run("crd and rbac", func(t *testing.T) {
		tmp := t.TempDir()
		run(t, rbacArg, "crd", paths,
			"output:crd:artifacts:config="+filepath.Join(tmp, "crd"),
			"output:rbac:artifacts:config="+filepath.Join(tmp, "rbac"))
		compareDirs(t, filepath.Join(root, "config", "crd", "bases"), filepath.Join(tmp, "crd"), true)
		// config/rbac also holds hand-written bindings and the kustomization.
		compareDirs(t, filepath.Join(root, "config", "rbac"), filepath.Join(tmp, "rbac"), false)
	})
	t.Run("deepcopy", func(t *testing.T) {
		fresh := run(t, "object:headerFile=hack/boilerplate.go.txt", "paths=./api/...", "output:object:stdout")
		checkedIn, err := os.ReadFile(filepath.Join(root, "api", "v1alpha1", "zz_generated.deepcopy.go"))
		if err != nil || !bytes.Equal(fresh, checkedIn) {
			t.Error("api/v1alpha1/zz_generated.deepcopy.go is stale: run `make generate` and commit")
		}
	})
}
