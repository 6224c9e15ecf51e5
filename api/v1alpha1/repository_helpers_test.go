package v1alpha1

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestRepositoryObjectName(t *testing.T) {
	tests := []struct {
		registry, path, prefix string
	}{
		{"main", "app", "main.app-"},
		{"main", "team/app", "main.team.app-"},
		{"main", "a_b", "main.a-b-"},
		{"main", "a__b/c--d", "main.a--b.c--d-"},
		{"main", strings.Repeat("abcdefghij/", 30) + "z", "main.abcdefghij."},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got := RepositoryObjectName(tc.registry, tc.path)
			if !strings.HasPrefix(got, tc.prefix) {
				t.Errorf("%q does not start with %q", got, tc.prefix)
			}
			if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Errorf("%q is not a valid object name: %v", got, errs)
			}
			if again := RepositoryObjectName(tc.registry, tc.path); again != got {
				t.Errorf("not deterministic: %q then %q", got, again)
			}
		})
	}
	// Paths whose readable parts coincide still get distinct names.
	pairs := [][2]string{{"a_b", "a-b"}, {"a/b", "a.b"}}
	for _, p := range pairs {
		if RepositoryObjectName("main", p[0]) == RepositoryObjectName("main", p[1]) {
			t.Errorf("%q and %q collide", p[0], p[1])
		}
	}
	if RepositoryObjectName("a", "b/c") == RepositoryObjectName("a.b", "c") {
		t.Error("registry/path boundaries collide")
	}
}

// TestRepositoryBytes: status.bytes counts each digest's content once,
// follows moves and removals, and TagCount follows too.
func TestRepositoryBytes(t *testing.T) {
	tag := func(name, digest string, content int64) TagStatus {
		return TagStatus{Name: name, Digest: digest, ContentSize: content}
	}
	var s RepositoryStatus
	steps := []struct {
		name     string
		do       func()
		bytes    int64
		tagCount int32
	}{
		{"first tag", func() { s.SetTag(tag("a", "sha256:1", 100)) }, 100, 1},
		{"second tag, same digest: counted once", func() { s.SetTag(tag("b", "sha256:1", 100)) }, 100, 2},
		{"third tag, other digest", func() { s.SetTag(tag("c", "sha256:2", 50)) }, 150, 3},
		{"a moved to a third digest: sha256:1 still held by b", func() { s.SetTag(tag("a", "sha256:3", 7)) }, 157, 3},
		{"b removed: sha256:1 held by none", func() { s.RemoveTag("b") }, 57, 2},
		{"removing a missing tag changes nothing", func() { s.RemoveTag("zz") }, 57, 2},
		{"all removed", func() { s.RemoveTag("a"); s.RemoveTag("c") }, 0, 0},
	}
	for _, step := range steps {
		step.do()
		s.Recount()
		if s.Bytes != step.bytes || s.TagCount != step.tagCount {
			t.Fatalf("after %s: bytes %d, tagCount %d; want %d, %d", step.name, s.Bytes, s.TagCount, step.bytes, step.tagCount)
		}
	}
}
