// Package tagstoretest is the shared behaviour test of tags.Store: every
// implementation runs it from its own tests with Run.
package tagstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

func desc(s string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(s), Size: int64(len(s))}
}

// Run runs the table against stores made by newStore; each subtest gets a
// fresh store.
func Run(t *testing.T, newStore func(t *testing.T) tags.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, ctx context.Context, s tags.Store)
	}{
		{"get missing", testGetMissing},
		{"put then get", testPutGet},
		{"put replaces", testPutReplaces},
		{"delete", testDelete},
		{"delete missing", testDeleteMissing},
		{"repositories are separate", testSeparateRepos},
		{"list sorted and paginated", testListPaginated},
		{"list empty repository", testListEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, t.Context(), newStore(t))
		})
	}
}

func testGetMissing(t *testing.T, ctx context.Context, s tags.Store) {
	if _, err := s.Get(ctx, "team/app", "nope"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("Get missing = %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, ctx context.Context, s tags.Store) {
	want := desc("one")
	if err := s.Put(ctx, "team/app", "v1", want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "team/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want.Digest || got.MediaType != want.MediaType || got.Size != want.Size {
		t.Fatalf("Get = %+v, want %+v", got, want)
	}
}

func testPutReplaces(t *testing.T, ctx context.Context, s tags.Store) {
	for _, c := range []string{"one", "two"} {
		if err := s.Put(ctx, "app", "latest", desc(c)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Get(ctx, "app", "latest")
	if err != nil || got.Digest != desc("two").Digest {
		t.Fatalf("Get after replace = %+v, %v", got, err)
	}
}

func testDelete(t *testing.T, ctx context.Context, s tags.Store) {
	if err := s.Put(ctx, "app", "v1", desc("one")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "app", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "app", "v1"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("Get after delete = %v, want ErrNotFound", err)
	}
	if got, err := s.List(ctx, "app", 0, ""); err != nil || len(got) != 0 {
		t.Fatalf("List after delete = %v, %v", got, err)
	}
}

func testDeleteMissing(t *testing.T, ctx context.Context, s tags.Store) {
	if err := s.Delete(ctx, "app", "v1"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("Delete missing = %v, want ErrNotFound", err)
	}
}

func testSeparateRepos(t *testing.T, ctx context.Context, s tags.Store) {
	// "a" is a prefix of "a/b" in the bucket layout; tags must not leak.
	if err := s.Put(ctx, "a/b", "v1", desc("ab")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "a", "v2", desc("a")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.List(ctx, "a", 0, ""); err != nil || !slices.Equal(got, []string{"v2"}) {
		t.Fatalf("List(a) = %v, %v", got, err)
	}
	if _, err := s.Get(ctx, "a", "v1"); !errors.Is(err, tags.ErrNotFound) {
		t.Fatalf("Get(a, v1) = %v, want ErrNotFound", err)
	}
}

func testListPaginated(t *testing.T, ctx context.Context, s tags.Store) {
	var all []string
	for i := range 12 {
		tag := fmt.Sprintf("t%02d", 11-i) // inserted in reverse order
		all = append(all, tag)
		if err := s.Put(ctx, "app", tag, desc(tag)); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(all)
	var got []string
	last := ""
	for range 10 {
		page, err := s.List(ctx, "app", 5, last)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 5 {
			t.Fatalf("page of %d tags, asked for 5", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		last = page[len(page)-1]
	}
	if !slices.Equal(got, all) {
		t.Fatalf("paginated List = %v, want %v", got, all)
	}
	if page, err := s.List(ctx, "app", 0, "t05"); err != nil || !slices.Equal(page, all[6:]) {
		t.Fatalf("List(last=t05) = %v, %v", page, err)
	}
}

func testListEmpty(t *testing.T, ctx context.Context, s tags.Store) {
	got, err := s.List(ctx, "never/pushed", 10, "")
	if err != nil || len(got) != 0 {
		t.Fatalf("List empty = %v, %v", got, err)
	}
}
