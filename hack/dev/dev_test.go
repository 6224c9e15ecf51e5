package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestDev runs what `make dev` runs, pushes an image with crane and finds
// its tag with kubectl in the Repository's status.
func TestDev(t *testing.T) {
	crane := testutil.Client(t, "crane")
	root := testenv.RepoRoot()
	dir := t.TempDir()
	registryd := filepath.Join(dir, "registryd")
	if out, err := exec.Command("go", "build", "-o", registryd, filepath.Join(root, "registryd")).CombinedOutput(); err != nil {
		t.Fatalf("building registryd: %v\n%s", err, out)
	}
	o := options{
		addr: testutil.FreeAddr(t), debugAddr: testutil.FreeAddr(t), devDir: filepath.Join(dir, "dev"), registryd: registryd,
		samples: filepath.Join(root, "config", "samples", "stevedore_v1alpha1_registry.yaml"),
		ready:   make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-o.ready:
	case err := <-done:
		t.Fatalf("dev stopped: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("dev did not come up within 2 minutes")
	}

	layer := filepath.Join(dir, "layer.tar")
	if out, err := exec.Command("tar", "cf", layer, "-C", root, "README.md").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	ref := o.addr + "/demo/hello:v1"
	out, err := exec.Command(crane, "append", "--insecure", "-f", layer, "-t", ref).CombinedOutput()
	if err != nil {
		t.Fatalf("crane append: %v\n%s", err, out)
	}
	digest, err := exec.Command(crane, "digest", "--insecure", ref).Output()
	if err != nil {
		t.Fatalf("crane digest: %v", err)
	}

	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	got, err := exec.Command(kubectl, "--kubeconfig", filepath.Join(o.devDir, "kubeconfig"),
		"get", "repositories", "-o", `jsonpath={range .items[*]}{.spec.name}:{.status.tags[*].name}@{.status.tags[*].digest}{"\n"}{end}`).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl: %v\n%s", err, got)
	}
	want := "demo/hello:v1@" + strings.TrimSpace(string(digest))
	if !strings.Contains(string(got), want) {
		t.Fatalf("kubectl shows %q, want a line %q", got, want)
	}

	// The cluster is lost, the bucket survives: every Repository and the
	// Registry go, the Registry is applied again, and the operator brings
	// the repository and its tag back from the bucket's journal.
	kube := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", filepath.Join(o.devDir, "kubeconfig")}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	kube("delete", "repositories", "--all")
	kube("delete", "registry", "dev")
	// With the objects gone, the tag is gone too (registryd reads status).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := exec.Command(crane, "digest", "--insecure", ref).Run(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still resolves with no Repository objects", ref)
		}
	}
	// Applied again as from Git: the sample, with the bucket make dev uses.
	manifest := filepath.Join(dir, "registry.yaml")
	registryYAML := "apiVersion: stevedore.dev/v1alpha1\nkind: Registry\nmetadata: {name: dev, namespace: default}\n" +
		"spec: {storage: {url: \"file://" + filepath.Join(o.devDir, "bucket") + "\"}, auth: {mode: none}}\n"
	if err := os.WriteFile(manifest, []byte(registryYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	kube("apply", "-f", manifest)
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.Command(crane, "digest", "--insecure", ref).Output()
		if err == nil && strings.TrimSpace(string(out)) == strings.TrimSpace(string(digest)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the rebuild, %s does not resolve (%v): repositories %s", ref, err, kube("get", "repositories"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out, err := exec.Command(crane, "pull", "--insecure", ref, filepath.Join(dir, "pulled.tar")).CombinedOutput(); err != nil {
		t.Fatalf("pull by tag after the rebuild: %v\n%s", err, out)
	}
}
