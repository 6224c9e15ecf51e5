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
