package generated

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// heavyForFuzz are packages a fuzz target's test binary must not hold:
// `go test -fuzz` compiles every package of the binary again, instrumented,
// so on a cold build cache each of these costs minutes of `make test`
// (fuzzing was the longest phase of a cold run, 890 s, when the server's
// binary held all three).
var heavyForFuzz = []string{
	"cloud.google.com/go/storage",                // the GCS client: internal/bucket.ListStart
	"k8s.io/client-go/kubernetes",                // every API group's clients: auth.TokenReviewer
	"sigs.k8s.io/controller-runtime/pkg/envtest", // registryd/auth/kubetest
}

// TestFuzzTargetsStaySmall: the packages of the Makefile's FUZZ_TARGETS
// build none of heavyForFuzz into their test binaries.
func TestFuzzTargetsStaySmall(t *testing.T) {
	root := testenv.RepoRoot()
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`(?m)^FUZZ_TARGETS :=((?:.*\\\n)*.*)$`).FindSubmatch(mk)
	if block == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	pkgs := map[string]bool{}
	for _, target := range strings.Fields(strings.ReplaceAll(string(block[1]), "\\\n", " ")) {
		_, pkg, ok := strings.Cut(target, "@")
		if !ok {
			t.Fatalf("FUZZ_TARGETS entry %q is not NAME@PACKAGE", target)
		}
		pkgs[pkg] = true
	}
	if len(pkgs) == 0 {
		t.Fatal("FUZZ_TARGETS names no package")
	}
	for pkg := range pkgs {
		t.Run(pkg, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-test", "-deps", pkg)
			cmd.Dir = root
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list -test -deps %s: %v", pkg, err)
			}
			deps := strings.Fields(string(out))
			for _, d := range deps {
				for _, heavy := range heavyForFuzz {
					if d == heavy {
						t.Errorf("%s's test binary holds %s, which its fuzz target then compiles instrumented", pkg, heavy)
					}
				}
			}
			t.Logf("%s: %d packages in the test binary", pkg, len(deps))
		})
	}
}
