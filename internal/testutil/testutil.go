// Package testutil holds helpers shared by black-box tests: free loopback
// addresses and the real registry clients hack/install-clients.sh installs.
package testutil

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// FreeAddr is a 127.0.0.1:port nothing listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Client returns the path of a registry client (crane, oras, regctl,
// skopeo), skipping the test when it is not installed, or failing it under
// CI, where a missing client is a missing install step.
func Client(t testing.TB, name string) string {
	t.Helper()
	dirs := []string{os.Getenv("STEVEDORE_CLIENTS")}
	if cache := os.Getenv("STEVEDORE_CACHE"); cache != "" {
		dirs = append(dirs, filepath.Join(cache, "clients"))
	}
	if home, err := os.UserCacheDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "stevedore", "clients"))
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (make test installs it: hack/install-clients.sh)", name)
	}
	t.Skipf("%s not installed (run hack/install-clients.sh)", name)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// FirstDifferences lists up to ten names in got and not in want ("+name")
// and in want and not in got ("-name"), for a failure message.
func FirstDifferences(got, want []string) []string {
	var out []string
	for _, g := range got {
		if !slices.Contains(want, g) {
			out = append(out, "+"+g)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, "-"+w)
		}
	}
	return out[:min(len(out), 10)]
}
