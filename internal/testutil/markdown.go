package testutil

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// DocObject is one YAML document of a documentation page, as JSON.
type DocObject struct {
	APIVersion, Kind string
	JSON             []byte
}

// DocYAML returns the documents of every ```yaml block of the markdown
// file at path (relative to the repository root), in order, so tests run
// what the docs tell users to apply.
func DocYAML(t testing.TB, path string) []DocObject {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), path))
	if err != nil {
		t.Fatal(err)
	}
	var out []DocObject
	blocks := strings.Split(string(b), "```yaml\n")
	for _, blk := range blocks[1:] {
		body, _, ok := strings.Cut(blk, "```")
		if !ok {
			t.Fatalf("%s: a yaml block is not closed", path)
		}
		for _, doc := range strings.Split(body, "\n---\n") {
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v\n%s", path, err, doc)
			}
			var meta struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(j, &meta); err != nil {
				t.Fatal(err)
			}
			out = append(out, DocObject{APIVersion: meta.APIVersion, Kind: meta.Kind, JSON: bytes.TrimSpace(j)})
		}
	}
	return out
}

// DocKind returns the documents of kind in objs, failing the test if there
// are none.
func DocKind(t testing.TB, objs []DocObject, kind string) []DocObject {
	t.Helper()
	var out []DocObject
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	if len(out) == 0 {
		t.Fatalf("the page holds no %s", kind)
	}
	return out
}
