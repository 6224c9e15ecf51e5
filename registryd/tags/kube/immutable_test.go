package kube_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestImmutableTagRules: the Registry's and the Repository's patterns,
// anchored, refuse moving, deleting and untagging a tag that exists, and
// nothing else.
func TestImmutableTagRules(t *testing.T) {
	ctx := context.Background()
	one := desc("one").Digest
	tests := []struct {
		name     string
		registry []string // Registry.spec.immutableTags
		repo     []string // Repository.spec.immutableTags
		tag      string
		// op runs after tag was pushed pointing at "one".
		op   func(s *kube.Store, tag string) error
		want string // "": allowed; else the DENIED detail it contains
	}{
		{"Repository rule refuses an overwrite", nil, []string{"v[0-9]+([.][0-9]+)*"}, "v1.2",
			func(s *kube.Store, tag string) error { return s.Put(ctx, "app", tag, desc("two")) },
			`tag "v1.2" is immutable (rule "v[0-9]+([.][0-9]+)*" of Repository main.app-`},
		{"Registry rule refuses an overwrite", []string{"release-.*"}, nil, "release-7",
			func(s *kube.Store, tag string) error { return s.Put(ctx, "app", tag, desc("two")) },
			`tag "release-7" is immutable (rule "release-.*" of Registry main): it points at ` + one.String() + " and cannot be overwritten"},
		{"rules of both add up", []string{"release-.*"}, []string{"v1"}, "release-7",
			func(s *kube.Store, tag string) error { return s.Delete(ctx, "app", tag) },
			`(rule "release-.*" of Registry main)`},
		{"refuses a tag delete", nil, []string{"v1"}, "v1",
			func(s *kube.Store, tag string) error { return s.Delete(ctx, "app", tag) },
			"cannot be deleted"},
		{"refuses untagging by manifest delete", nil, []string{"v1"}, "v1",
			func(s *kube.Store, _ string) error { _, err := s.UntagDigest(ctx, "app", one); return err },
			"cannot be removed by deleting its manifest"},
		{"same digest again is fine", []string{".*"}, nil, "v1",
			func(s *kube.Store, tag string) error { return s.Put(ctx, "app", tag, desc("one")) }, ""},
		{"anchored: a prefix match is no match", nil, []string{"v1"}, "v1.2",
			func(s *kube.Store, tag string) error { return s.Put(ctx, "app", tag, desc("two")) }, ""},
		{"anchored: a suffix match is no match", []string{"latest"}, nil, "not-latest",
			func(s *kube.Store, tag string) error { return s.Delete(ctx, "app", tag) }, ""},
		{"other tags stay mutable", nil, []string{"v.*"}, "latest",
			func(s *kube.Store, tag string) error { return s.Put(ctx, "app", tag, desc("two")) }, ""},
		{"a new tag may be created", nil, []string{".*"}, "v1",
			func(s *kube.Store, _ string) error { return s.Put(ctx, "app", "v2", desc("two")) }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, func(r *v1.Registry) { r.Spec.ImmutableTags = tc.registry })
			createRepository(t, reg, "app", tc.repo...)
			s := replica(t, reg, journal(t))
			mustPut(t, s, "app", tc.tag, "one")
			err := tc.op(s, tc.tag)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want allowed, got %v", err)
				}
				return
			}
			wantDenied(t, err, tc.want)
			if got := statusTags(t, reg, "app")[tc.tag]; got != one.String() {
				t.Errorf("after the refusal, status has %s -> %q, want %s", tc.tag, got, one)
			}
		})
	}
}

// TestImmutableRuleNeverStale: a rule added while a replica's cache is
// frozen (so the replica has not seen it) still refuses that replica's
// overwrite: a Registry rule because a write that would move a tag reads
// the Registry live, a Repository rule because the status update is
// conditional on the resourceVersion the rule changed.
func TestImmutableRuleNeverStale(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		add  func(t *testing.T, reg *v1.Registry)
		want string
	}{
		{"Registry rule", func(t *testing.T, reg *v1.Registry) {
			update(t, &v1.Registry{}, client.ObjectKeyFromObject(reg), func(o client.Object) {
				o.(*v1.Registry).Spec.ImmutableTags = []string{"v1"}
			})
		}, `(rule "v1" of Registry main)`},
		{"Repository rule", func(t *testing.T, reg *v1.Registry) {
			update(t, &v1.Repository{}, keyIn(reg, v1.RepositoryObjectName(reg.Name, "app")), func(o client.Object) {
				o.(*v1.Repository).Spec.ImmutableTags = []string{"v1"}
			})
		}, `(rule "v1" of Repository main.app-`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, nil)
			x, gate := frozenReplica(t, reg, journal(t))
			mustPut(t, x, "app", "v1", "one")
			cachedSees(t, x, "app", "v1", desc("one").Digest.String())
			gate.freeze()
			tc.add(t, reg)
			wantDenied(t, x.Put(ctx, "app", "v1", desc("two")), tc.want)
			wantDenied(t, x.Delete(ctx, "app", "v1"), tc.want)
		})
	}
}

// TestImmutableRuleTakesEffectWithoutRestart: removing a rule frees the
// tag on a running replica, adding one back freezes it again.
func TestImmutableRuleTakesEffectWithoutRestart(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, func(r *v1.Registry) { r.Spec.ImmutableTags = []string{"v1"} })
	s := replica(t, reg, journal(t))
	mustPut(t, s, "app", "v1", "one")
	wantDenied(t, s.Put(ctx, "app", "v1", desc("two")), "immutable")
	setRegistryRules(t, reg)
	mustPut(t, s, "app", "v1", "two")
	setRegistryRules(t, reg, "v.*")
	wantDenied(t, s.Put(ctx, "app", "v1", desc("three")), `(rule "v.*" of Registry main)`)
}

// TestImmutableConcurrentOverwrites: many overwrites of one immutable tag
// from three replicas, racing its first push: exactly one digest wins,
// every other push is refused, and the tag never moves.
func TestImmutableConcurrentOverwrites(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, func(r *v1.Registry) { r.Spec.ImmutableTags = []string{"v[0-9]+"} })
	j := journal(t)
	replicas := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}
	const n = 60
	var won, denied atomic.Int64
	var winner sync.Map
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			content := fmt.Sprintf("c%d", i)
			err := replicas[i%3].Put(ctx, "app", "v1", desc(content))
			var e *errcode.Error
			switch {
			case err == nil:
				won.Add(1)
				winner.Store(desc(content).Digest.String(), true)
			case errors.As(err, &e) && e.Code == errcode.Denied:
				denied.Add(1)
			default:
				t.Errorf("Put: %v", err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 || denied.Load() != n-1 {
		t.Fatalf("%d pushes succeeded and %d were refused; want 1 and %d", won.Load(), denied.Load(), n-1)
	}
	got := statusTags(t, reg, "app")["v1"]
	if _, ok := winner.Load(got); !ok {
		t.Errorf("status has v1 -> %s, not the digest whose push succeeded", got)
	}
	if jt := journalTags(t, j, "app")["v1"]; jt != got {
		t.Errorf("journal has v1 -> %s, status %s", jt, got)
	}
}

func setRegistryRules(t *testing.T, reg *v1.Registry, patterns ...string) {
	t.Helper()
	update(t, &v1.Registry{}, client.ObjectKeyFromObject(reg), func(o client.Object) {
		o.(*v1.Registry).Spec.ImmutableTags = patterns
	})
}

// update applies mutate to the live object of key, retrying on conflict.
func update(t *testing.T, obj client.Object, key client.ObjectKey, mutate func(client.Object)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(context.Background(), key, obj); err != nil {
			return err
		}
		mutate(obj)
		return env.Client.Update(context.Background(), obj)
	})
	if err != nil {
		t.Fatal(err)
	}
}
