package generated

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// startAPIServer starts a real kube-apiserver + etcd for one test and
// returns an admin kubeconfig and a runner of the real kubectl against it.
// The runner fails the test unless kubectl's success is wantOK, and returns
// its combined output.
func startAPIServer(t *testing.T) (kubeconfig string, kubectl func(stdin string, wantOK bool, args ...string) string) {
	t.Helper()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	kubeconfig, err = env.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(env.AssetsDir(), "kubectl")
	return kubeconfig, func(stdin string, wantOK bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
}
