package e2e

import (
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestPullTimesRecorded: registryd in kubernetes mode with a pull-record
// interval of a second. crane pushes two tags and pulls one by tag; the
// Repository's status then shows a pull time for that tag and none for
// the other, written within a few intervals, not per pull.
func TestPullTimesRecorded(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ctx := t.Context()
	const ns, regName, repo = "pulls", "reg", "team/app"
	kubeRegistry(t, ns, regName, v1.RegistrySpec{})
	r := kubeReplicas(t, ns, regName, 1, "--pull-record-interval", "1s")[0]
	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"hello.txt": "pulled\n"})
	crane := testutil.Client(t, "crane")
	for _, tag := range []string{"pulled", "idle"} {
		if out, err := try(home, "", crane, "append", "--insecure", "-f", layer, "-t", r.host+"/"+repo+":"+tag); err != nil {
			t.Fatalf("crane append %s: %v\n%s", tag, err, out)
		}
	}
	before := time.Now().Truncate(time.Second)
	for range 5 {
		if out, err := try(home, "", crane, "pull", "--insecure", r.host+"/"+repo+":pulled", filepath.Join(home, "image.tar")); err != nil {
			t.Fatalf("crane pull: %v\n%s", err, out)
		}
	}
	key := client.ObjectKey{Namespace: ns, Name: v1.RepositoryObjectName(regName, repo)}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var cur v1.Repository
		if err := env.Client.Get(ctx, key, &cur); err != nil {
			t.Fatal(err)
		}
		p, _ := cur.Status.FindTag("pulled")
		i, _ := cur.Status.FindTag("idle")
		if p.PulledAt != nil {
			if p.PulledAt.Time.Before(before) || i.PulledAt != nil {
				t.Fatalf("pulled: pulledAt %v (pulls began at %v); idle: pulledAt %v, want none", p.PulledAt, before, i.PulledAt)
			}
			t.Logf("5 crane pulls recorded as pulledAt %v", p.PulledAt)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pull time recorded 10 s after the pulls; tags %+v", cur.Status.Tags)
		}
	}
}
