package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestManagerBinary runs the built operator against a real API server: it
// takes the leader Lease, answers its health and metrics endpoints, and
// gives a Registry's Deployment the --registryd-image.
func TestManagerBinary(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	dir := t.TempDir()
	bin := filepath.Join(dir, "manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kubeconfig, err := env.WriteKubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	metrics, probes := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--leader-elect", "--leader-election-namespace=default",
		"--metrics-bind-address="+metrics, "--health-probe-bind-address="+probes, "--registryd-image=example.test/stevedore:v9")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logs, _ := os.Create(filepath.Join(dir, "manager.log"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()

	checks := []struct {
		name  string
		check func() error
	}{
		{"healthz", func() error { return get200("http://" + probes + "/healthz") }},
		{"readyz", func() error { return get200("http://" + probes + "/readyz") }},
		{"metrics", func() error { return get200("http://" + metrics + "/metrics") }},
		{"leader lease", func() error {
			return env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "stevedore-operator.stevedore.dev"}, &coordinationv1.Lease{})
		}},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) { eventually(t, logs.Name(), c.check) })
	}
	t.Run("registryd image", func(t *testing.T) {
		reg := &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "bin", Namespace: "default"},
			Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}
		if err := env.Client.Create(ctx, reg); err != nil {
			t.Fatal(err)
		}
		eventually(t, logs.Name(), func() error {
			var d appsv1.Deployment
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "bin-registry"}, &d); err != nil {
				return err
			}
			if img := d.Spec.Template.Spec.Containers[0].Image; img != "example.test/stevedore:v9" {
				return fmt.Errorf("image %s", img)
			}
			return nil
		})
	})
}

func get200(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func eventually(t *testing.T, logFile string, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	logs, _ := os.ReadFile(logFile)
	t.Fatalf("%v\noperator log:\n%s", err, logs)
}
