package tags_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// TestImmutableRulesMatch: patterns match whole tags; an invalid one,
// which only an object stored before the API server checked them can
// hold, covers every tag.
func TestImmutableRulesMatch(t *testing.T) {
	var p tags.Patterns
	tests := []struct {
		pattern string
		tag     string
		want    bool
	}{
		{"v1", "v1", true},
		{"v1", "v1.2", false},
		{"v1", "xv1", false},
		{"v[0-9]+([.][0-9]+)*", "v1.2.3", true},
		{"v[0-9]+([.][0-9]+)*", "v1.2.3-rc1", false},
		{"^release-.*$", "release-2024", true},
		{"latest|stable", "stable", true},
		{"latest|stable", "stable-1", false},
		{"(unclosed", "anything", true},
	}
	for _, tc := range tests {
		t.Run(tc.pattern+"/"+tc.tag, func(t *testing.T) {
			rule, ok := p.Rules("Repository x", []string{tc.pattern}).Match(tc.tag)
			if ok != tc.want {
				t.Fatalf("match = %v, want %v", ok, tc.want)
			}
			if ok && !strings.Contains(rule.String(), fmt.Sprintf("rule %q of Repository x", tc.pattern)) {
				t.Errorf("rule named %q", rule)
			}
		})
	}
	if _, err := tags.MustRules("flag --immutable-tags", []string{"(unclosed"}); err == nil {
		t.Error("MustRules accepted an invalid pattern")
	}
}

func tagDesc(content string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(content), Size: int64(len(content))}
}

// bucketOpeners open one bucket several times, as replicas do: each
// handle its own, over the same storage.
var bucketOpeners = map[string]func(t *testing.T) func() *blob.Bucket{
	"mem": func(t *testing.T) func() *blob.Bucket {
		b := memblob.OpenBucket(nil)
		t.Cleanup(func() { _ = b.Close() })
		return func() *blob.Bucket { return b }
	},
	"file": func(t *testing.T) func() *blob.Bucket {
		dir := t.TempDir()
		return func() *blob.Bucket {
			b, err := fileblob.OpenBucket(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			return blob.PrefixedBucket(b, "team/registry/")
		}
	},
}

// TestBucketImmutableTags: the bucket store (standalone mode) refuses
// moving, deleting and untagging an immutable tag, with the rule named.
func TestBucketImmutableTags(t *testing.T) {
	ctx := context.Background()
	rules, err := tags.MustRules("flag --immutable-tags", []string{"v[0-9]+"})
	if err != nil {
		t.Fatal(err)
	}
	one := tagDesc("one")
	tests := []struct {
		name string
		tag  string
		op   func(s *tags.Bucket, tag string) error
		want string // "": allowed
	}{
		{"overwrite", "v1", func(s *tags.Bucket, tag string) error { return s.Put(ctx, "app", tag, tagDesc("two")) },
			`tag "v1" is immutable (rule "v[0-9]+" of flag --immutable-tags): it points at ` + one.Digest.String() + " and cannot be overwritten"},
		{"delete", "v1", func(s *tags.Bucket, tag string) error { return s.Delete(ctx, "app", tag) }, "cannot be deleted"},
		{"untag by digest", "v1", func(s *tags.Bucket, _ string) error { _, err := s.UntagDigest(ctx, "app", one.Digest); return err },
			"cannot be removed by deleting its manifest"},
		{"same digest again", "v1", func(s *tags.Bucket, tag string) error { return s.Put(ctx, "app", tag, one) }, ""},
		{"mutable tag moves", "latest", func(s *tags.Bucket, tag string) error { return s.Put(ctx, "app", tag, tagDesc("two")) }, ""},
		{"mutable tag untagged", "latest", func(s *tags.Bucket, _ string) error { _, err := s.UntagDigest(ctx, "app", one.Digest); return err }, ""},
	}
	for backend, open := range bucketOpeners {
		for _, tc := range tests {
			t.Run(backend+"/"+tc.name, func(t *testing.T) {
				s := tags.NewBucketWith(open(t)(), tags.BucketOptions{ImmutableTags: rules})
				if err := s.Put(ctx, "app", tc.tag, one); err != nil {
					t.Fatal(err)
				}
				err := tc.op(s, tc.tag)
				if tc.want == "" {
					if err != nil {
						t.Fatalf("want allowed, got %v", err)
					}
					return
				}
				var e *errcode.Error
				if !errors.As(err, &e) || e.Code != errcode.Denied || !strings.Contains(fmt.Sprint(e.Detail), tc.want) {
					t.Fatalf("got %v, want DENIED containing %q", err, tc.want)
				}
				if got, err := s.Get(ctx, "app", tc.tag); err != nil || got.Digest != one.Digest {
					t.Errorf("after the refusal the tag is %v, %v; want %s", got.Digest, err, one.Digest)
				}
			})
		}
	}
}

// TestBucketImmutableRace: first pushes of one immutable tag with
// different digests race through three handles on one bucket: exactly one
// wins and the tag holds its digest. (fileblob's own IfNotExist lets two
// of 48 racing writers win within a few rounds.)
func TestBucketImmutableRace(t *testing.T) {
	ctx := context.Background()
	rules, err := tags.MustRules("flag --immutable-tags", []string{".*"})
	if err != nil {
		t.Fatal(err)
	}
	for backend, open := range bucketOpeners {
		t.Run(backend, func(t *testing.T) {
			opener := open(t)
			stores := []*tags.Bucket{}
			for range 3 {
				stores = append(stores, tags.NewBucketWith(opener(), tags.BucketOptions{ImmutableTags: rules}))
			}
			for round := range 30 {
				tag := fmt.Sprintf("t%d", round)
				var won atomic.Int64
				var winner atomic.Value
				var wg sync.WaitGroup
				for i := range 48 {
					wg.Go(func() {
						d := tagDesc(fmt.Sprintf("%s-%d", tag, i))
						err := stores[i%3].Put(ctx, "app", tag, d)
						var e *errcode.Error
						switch {
						case err == nil:
							won.Add(1)
							winner.Store(d.Digest)
						case errors.As(err, &e) && e.Code == errcode.Denied:
						default:
							t.Errorf("Put: %v", err)
						}
					})
				}
				wg.Wait()
				if won.Load() != 1 {
					t.Fatalf("%s: %d pushes won, want 1", tag, won.Load())
				}
				if got, err := stores[0].Get(ctx, "app", tag); err != nil || got.Digest != winner.Load() {
					t.Fatalf("%s holds %v (%v), the winner pushed %v", tag, got.Digest, err, winner.Load())
				}
			}
			if list, _ := stores[0].List(ctx, "app", 0, ""); len(list) != 30 {
				t.Errorf("List = %v: the staging objects must not show as tags", list)
			}
		})
	}
}
