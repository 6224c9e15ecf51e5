package kube

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

func repoAt(name, path string, deleting bool) *v1.Repository {
	r := &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.RepositorySpec{Name: path}}
	if deleting {
		now := metav1.Now()
		r.DeletionTimestamp = &now
	}
	return r
}

// TestCatalogIndex: the index the informer's events keep equals the set of
// paths of the Repositories not being deleted, whatever the order of events.
func TestCatalogIndex(t *testing.T) {
	type event struct {
		op       string // add, update, delete, tombstone
		old, new *v1.Repository
	}
	a, b, c := repoAt("a", "team/a", false), repoAt("b", "team/b", false), repoAt("c", "c", false)
	squat := repoAt("squat", "team/a", false) // a second object naming team/a
	tests := []struct {
		name   string
		events []event
		want   []string
	}{
		{"adds, sorted", []event{{"add", nil, b}, {"add", nil, c}, {"add", nil, a}}, []string{"c", "team/a", "team/b"}},
		{"status update changes nothing", []event{{"add", nil, a}, {"update", a, a}}, []string{"team/a"}},
		{"deletion starts: gone", []event{{"add", nil, a}, {"add", nil, b}, {"update", a, repoAt("a", "team/a", true)}}, []string{"team/b"}},
		{"deleted", []event{{"add", nil, a}, {"add", nil, b}, {"delete", b, nil}}, []string{"team/a"}},
		{"deleted, final state unknown", []event{{"add", nil, a}, {"add", nil, b}, {"tombstone", b, nil}}, []string{"team/a"}},
		{"two objects, one path: listed once, until both go", []event{{"add", nil, a}, {"add", nil, squat}, {"delete", a, nil}}, []string{"team/a"}},
		{"two objects, both gone", []event{{"add", nil, a}, {"add", nil, squat}, {"delete", a, nil}, {"delete", squat, nil}}, []string{}},
		{"delete of one never added", []event{{"add", nil, a}, {"delete", b, nil}}, []string{"team/a"}},
		{"added while being deleted", []event{{"add", nil, repoAt("a", "team/a", true)}, {"delete", repoAt("a", "team/a", true), nil}}, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := newCatalogIndex()
			h := x.handler()
			for _, e := range tc.events {
				switch e.op {
				case "add":
					h.OnAdd(e.new, false)
				case "update":
					h.OnUpdate(e.old, e.new)
				case "delete":
					h.OnDelete(e.old)
				case "tombstone":
					h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "ns/" + e.old.Name, Obj: e.old})
				}
			}
			if got, _ := x.page("", -1); !slices.Equal(got, tc.want) {
				t.Fatalf("index %q, want %q", got, tc.want)
			}
		})
	}
}

// TestCatalogIndexPages: pages after any last, of any size, concatenate to
// the whole catalog, and more is true exactly when a page left paths out.
func TestCatalogIndexPages(t *testing.T) {
	x := newCatalogIndex()
	h := x.handler()
	var all []string
	for _, p := range []string{"a", "a/b", "b", "b/c/d", "c", "library/x", "z"} {
		h.OnAdd(repoAt(p, p, false), false)
		all = append(all, p)
	}
	for n := 1; n <= len(all)+1; n++ {
		var got []string
		last := ""
		for {
			page, more := x.page(last, n)
			if len(page) > n {
				t.Fatalf("n=%d: page of %d", n, len(page))
			}
			got = append(got, page...)
			if !more {
				break
			}
			last = page[len(page)-1]
		}
		if !slices.Equal(got, all) {
			t.Fatalf("n=%d: pages gave %q, want %q", n, got, all)
		}
	}
	// last need not be a repository: the page starts after it.
	if page, _ := x.page("b/a", 2); !slices.Equal(page, []string{"b/c/d", "c"}) {
		t.Fatalf("after b/a: %q", page)
	}
	if page, more := x.page("z", 5); len(page) != 0 || more {
		t.Fatalf("after the last: %q, more %v", page, more)
	}
}
