package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
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
	var welcome strings.Builder
	if out, err := exec.Command("go", "build", "-o", registryd, filepath.Join(root, "registryd")).CombinedOutput(); err != nil {
		t.Fatalf("building registryd: %v\n%s", err, out)
	}
	o := options{
		addr: testutil.FreeAddr(t), debugAddr: testutil.FreeAddr(t), devDir: filepath.Join(dir, "dev"), registryd: registryd,
		samples: filepath.Join(root, "config", "samples", "stevedore_v1alpha1_registry.yaml"),
		ready:   make(chan struct{}),
		out:     &welcome,
	}
	stop := start(t, o)

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

	// The cluster is lost, the bucket survives: stop everything (the API
	// server's etcd lives in a temp dir), start again over the same dev dir.
	// The operator brings the repository and its tag back from the journal.
	stop()
	o.ready = make(chan struct{})
	stop = start(t, o)
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.Command(crane, "digest", "--insecure", ref).Output()
		if err == nil && strings.TrimSpace(string(out)) == strings.TrimSpace(string(digest)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("on the new cluster, %s does not resolve (%v)", ref, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out, err := exec.Command(crane, "pull", "--insecure", ref, filepath.Join(dir, "pulled.tar")).CombinedOutput(); err != nil {
		t.Fatalf("pull by tag on the new cluster: %v\n%s", err, out)
	}
	got, err = exec.Command(kubectl, "--kubeconfig", filepath.Join(o.devDir, "kubeconfig"),
		"get", "repositories", "-o", `jsonpath={range .items[*]}{.spec.name}:{.status.tags[*].name}@{.status.tags[*].digest}{"\n"}{end}`).CombinedOutput()
	if err != nil || !strings.Contains(string(got), want) {
		t.Fatalf("the new cluster's repositories: %q (%v), want %q", got, err, want)
	}

	// The welcome's garbage collection, as printed: a deleted image's
	// blobs go, the tagged one stays, the summary is an Event.
	gone, goneLayer := o.addr+"/demo/gone", filepath.Join(dir, "gone.tar")
	if out, err := exec.Command("tar", "cf", goneLayer, "-C", root, "go.mod").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if out, err := exec.Command(crane, "append", "--insecure", "-f", goneLayer, "-t", gone+":v1").CombinedOutput(); err != nil {
		t.Fatalf("crane append: %v\n%s", err, out)
	}
	goneDigest, err := exec.Command(crane, "digest", "--insecure", gone+":v1").Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(crane, "delete", "--insecure", gone+"@"+strings.TrimSpace(string(goneDigest))).CombinedOutput(); err != nil {
		t.Fatalf("crane delete: %v\n%s", err, out)
	}
	var gcLine string
	for _, l := range strings.Split(welcome.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), registryd+" gc ") {
			gcLine = strings.TrimSpace(l) // the second start's, the last
		}
	}
	if gcLine == "" {
		t.Fatalf("no `registryd gc` line in the welcome:\n%s", welcome.String())
	}
	args := strings.Fields(gcLine)
	summary, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	t.Logf("%s\n%s", gcLine, summary)
	if m := regexp.MustCompile(`gc: deleted .* (\d+) blobs`).FindStringSubmatch(string(summary)); err != nil || m == nil || m[1] == "0" {
		t.Fatalf("the welcome's gc: %v, want the deleted image's blobs collected", err)
	}
	if out, err := exec.Command(crane, "pull", "--insecure", ref, filepath.Join(dir, "after-gc.tar")).CombinedOutput(); err != nil {
		t.Fatalf("pull by tag after gc: %v\n%s", err, out)
	}
	got, err = exec.Command(kubectl, "--kubeconfig", filepath.Join(o.devDir, "kubeconfig"), "get", "events", "-A",
		"--field-selector", "reason=GarbageCollected", "-o", "name").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) == "" {
		t.Errorf("no GarbageCollected Event: %q %v", got, err)
	}
	stop()
}

// start runs what make dev runs until the returned stop is called.
func start(t *testing.T, o options) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	select {
	case <-o.ready:
	case err := <-done:
		cancel()
		t.Fatalf("dev stopped: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("dev did not come up within 2 minutes")
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}
