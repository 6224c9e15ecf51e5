package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestAuthFailsClosed: until credential checks exist (issue 8), a registryd
// in an auth mode other than none refuses crane's anonymous push, and
// serves pulls only when anonymous pull is on; mode none takes the push.
func TestAuthFailsClosed(t *testing.T) {
	crane := testutil.Client(t, "crane")
	layer := filepath.Join(t.TempDir(), "layer.tar")
	if out, err := exec.Command("tar", "cf", layer, "-C", "..", "main.go").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	tests := []struct {
		name     string
		flags    []string
		pushOK   bool
		pullCode string // what crane ls reports; "" when it succeeds
	}{
		{"none", []string{"--auth", "none"}, true, ""},
		{"kubernetes", []string{"--auth", "kubernetes"}, false, "UNAUTHORIZED"},
		{"htpasswd", []string{"--auth", "htpasswd"}, false, "UNAUTHORIZED"},
		{"kubernetes with anonymous pull", []string{"--auth", "kubernetes", "--anonymous-pull"}, false, "NAME_UNKNOWN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := startRegistryd(t, "mem://", tc.flags...)
			out, err := exec.Command(crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/team/app:v1").CombinedOutput()
			if tc.pushOK != (err == nil) {
				t.Fatalf("anonymous push: err %v, want success %v\n%s", err, tc.pushOK, out)
			}
			// Refused at crane's first HEAD (a status, no body) or, when pulls
			// are open, at the upload POST (the spec's UNAUTHORIZED envelope).
			if !tc.pushOK && !strings.Contains(string(out), "401 Unauthorized") && !strings.Contains(string(out), "UNAUTHORIZED") {
				t.Errorf("refused push says %q, want 401 UNAUTHORIZED", out)
			}
			out, err = exec.Command(crane, "ls", "--insecure", reg.host+"/team/app").CombinedOutput()
			switch {
			case tc.pullCode == "" && err != nil:
				t.Errorf("pull side: %v\n%s", err, out)
			case tc.pullCode != "" && !strings.Contains(string(out), tc.pullCode):
				t.Errorf("pull side says %q, want %s", out, tc.pullCode)
			}
		})
	}
}
