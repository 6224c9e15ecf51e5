package generated

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// TestDockerfileBuilds runs the Dockerfile's own `go build` commands (there
// is no Docker engine on our machines) and checks they make the static,
// version-stamped manager and registryd the final image copies.
func TestDockerfileBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries")
	}
	root := testenv.RepoRoot()
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, then take the build stage's RUN command that builds.
	text := strings.ReplaceAll(string(df), "\\\n", " ")
	var run string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "RUN ") && strings.Contains(line, "go build") {
			run = strings.TrimPrefix(line, "RUN ")
		}
	}
	if run == "" {
		t.Fatal("the Dockerfile has no RUN … go build")
	}
	// make test builds the binaries once, with the Makefile's flags (checked
	// equal to the Dockerfile's below), and names them here: a cold compile
	// inside go test overran its timeout on a loaded machine.
	out := os.Getenv("STEVEDORE_BIN_DIR")
	if out == "" {
		out = t.TempDir()
		script := strings.NewReplacer("/out/", out+"/", "${VERSION}", "9.9.9-test").Replace(run)
		cmd := exec.Command("sh", "-ec", script)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("the Dockerfile's build command failed: %v\n%s\n%s", err, script, b)
		}
	}
	version := os.Getenv("STEVEDORE_BIN_VERSION")
	if version == "" {
		version = "9.9.9-test"
	}
	// The final stage copies exactly these.
	copies := regexp.MustCompile(`(?m)^COPY --from=build /out/(\S+) /(\S+)$`).FindAllStringSubmatch(string(df), -1)
	if len(copies) != 3 {
		t.Fatalf("the final stage copies %d binaries, want manager, registryd and stevedore-credential-provider", len(copies))
	}
	for _, c := range copies {
		t.Run(c[1], func(t *testing.T) {
			path := filepath.Join(out, c[1])
			f, err := elf.Open(path)
			if err != nil {
				t.Fatalf("%s: %v", c[1], err)
			}
			defer f.Close()
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Fatalf("%s is dynamically linked; distroless/static needs CGO_ENABLED=0", c[1])
				}
			}
			b, _ := os.ReadFile(path)
			if !strings.Contains(string(b), version) {
				t.Errorf("%s does not carry the VERSION build argument", c[1])
			}
		})
	}
	// make image packs the same binaries as the Dockerfile.
	mkb, _ := os.ReadFile(filepath.Join(root, "Makefile"))
	imageBins := regexp.MustCompile(`(?m)^IMAGE_BINARIES \?= (.*)$`).FindStringSubmatch(string(mkb))
	if imageBins == nil {
		t.Fatal("the Makefile has no IMAGE_BINARIES")
	}
	var want []string
	for _, b := range strings.Fields(imageBins[1]) {
		name, _, _ := strings.Cut(b, "=")
		want = append(want, name)
	}
	var got []string
	for _, c := range copies {
		got = append(got, c[2])
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the Dockerfile copies %v, make image packs %v", got, want)
	}
	// The Makefile builds with the same flags.
	mk, _ := os.ReadFile(filepath.Join(root, "Makefile"))
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "internal/version.Version="} {
		if !strings.Contains(string(mk), flag) || !strings.Contains(run, flag) {
			t.Errorf("the Makefile and the Dockerfile disagree on %q", flag)
		}
	}
}
