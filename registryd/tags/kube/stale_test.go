package kube_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestStaleCacheNeverDecides runs two replicas, x and y, for one Registry
// over one journal. x's cache is frozen before y writes, so x decides with a
// cache that is behind; every answer x gives must still be the one a live
// read gives, and the journal must hold only what status committed.
func TestStaleCacheNeverDecides(t *testing.T) {
	a, b, c := desc("a").Digest.String(), desc("b").Digest.String(), desc("c").Digest.String()
	tests := []struct {
		name   string
		mutate func(*v1.Registry)
		// run freezes x's cache (freeze) at the point that makes it stale.
		run func(t *testing.T, reg *v1.Registry, x, y *kube.Store, freeze func(), j tags.Store)
		// want is the status and journal afterwards: tag -> digest.
		want map[string]string
	}{
		{"x re-pushes a tag y moved", nil, func(t *testing.T, _ *v1.Registry, x, y *kube.Store, freeze func(), _ tags.Store) {
			mustPut(t, x, "app", "t", "a")
			cachedSees(t, x, "app", "t", a)
			freeze()
			mustPut(t, y, "app", "t", "b")
			mustPut(t, x, "app", "t", "a") // 201 must mean status says a
		}, map[string]string{"t": a}},
		{"x deletes a tag y pushed", nil, func(t *testing.T, _ *v1.Registry, x, y *kube.Store, freeze func(), _ tags.Store) {
			mustPut(t, y, "app", "other", "a")
			cachedSees(t, x, "app", "other", a)
			freeze()
			mustPut(t, y, "app", "t", "b")
			if err := x.Delete(context.Background(), "app", "t"); err != nil {
				t.Fatalf("Delete of a tag another replica pushed: %v", err)
			}
		}, map[string]string{"other": a}},
		{"x counts tags y deleted", func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 2 }, func(t *testing.T, _ *v1.Registry, x, y *kube.Store, freeze func(), _ tags.Store) {
			mustPut(t, y, "app", "a", "a")
			mustPut(t, y, "app", "b", "b")
			cachedSees(t, x, "app", "b", b)
			freeze()
			if err := y.Delete(context.Background(), "app", "b"); err != nil {
				t.Fatal(err)
			}
			mustPut(t, x, "app", "c", "c") // room for it: a limit refusal must be decided live
		}, map[string]string{"a": a, "c": c}},
		{"immutable refusal leaves no journal entry", nil, func(t *testing.T, reg *v1.Registry, x, y *kube.Store, freeze func(), _ tags.Store) {
			createRepository(t, reg, "app", ".*")
			mustPut(t, y, "app", "other", "c")
			cachedSees(t, x, "app", "other", c)
			freeze()
			mustPut(t, y, "app", "t", "b")
			wantDenied(t, x.Put(context.Background(), "app", "t", desc("a")), "immutable")
		}, map[string]string{"other": c, "t": b}},
		{"limit refusal leaves no journal entry", func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 2 }, func(t *testing.T, _ *v1.Registry, x, y *kube.Store, freeze func(), _ tags.Store) {
			mustPut(t, y, "app", "a", "a")
			cachedSees(t, x, "app", "a", a)
			freeze()
			mustPut(t, y, "app", "b", "b")
			wantDenied(t, x.Put(context.Background(), "app", "c", desc("c")), "maxTagsPerRepository")
		}, map[string]string{"a": a, "b": b}},
		{"re-push rewrites a lost journal entry", nil, func(t *testing.T, _ *v1.Registry, x, _ *kube.Store, _ func(), j tags.Store) {
			mustPut(t, x, "app", "t", "a")
			cachedSees(t, x, "app", "t", a)
			// As if registryd died between the status update and the journal write.
			if err := j.Delete(context.Background(), "app", "t"); err != nil {
				t.Fatal(err)
			}
			mustPut(t, x, "app", "t", "a") // the client's retry
		}, map[string]string{"t": a}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, tc.mutate)
			j := journal(t)
			x, gate := frozenReplica(t, reg, j)
			y := replica(t, reg, j)
			tc.run(t, reg, x, y, gate.freeze, j)
			gate.thaw()
			if got := statusTags(t, reg, "app"); !equalMaps(got, tc.want) {
				t.Errorf("status %v, want %v", got, tc.want)
			}
			if got := journalTags(t, j, "app"); !equalMaps(got, tc.want) {
				t.Errorf("journal %v, want %v", got, tc.want)
			}
		})
	}
}

func wantDenied(t *testing.T, err error, detail string) {
	t.Helper()
	var e *errcode.Error
	if !errors.As(err, &e) || e.Code != errcode.Denied || !strings.Contains(fmt.Sprint(e.Detail), detail) {
		t.Fatalf("got %v, want DENIED naming %q", err, detail)
	}
}

// statusTags reads the Repository of path live: tag -> digest (none when
// there is no Repository). Safe from any goroutine.
func statusTags(t testing.TB, reg *v1.Registry, path string) map[string]string {
	t.Helper()
	var repo v1.Repository
	err := env.Client.Get(context.Background(), keyIn(reg, v1.RepositoryObjectName(reg.Name, path)), &repo)
	if err != nil && !apierrors.IsNotFound(err) {
		t.Error(err)
	}
	out := map[string]string{}
	for _, tag := range repo.Status.Tags {
		out[tag.Name] = tag.Digest
	}
	return out
}

// journalTags reads the journal of path: tag -> digest.
func journalTags(t testing.TB, j tags.Store, path string) map[string]string {
	t.Helper()
	ctx := context.Background()
	names, err := j.List(ctx, path, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, name := range names {
		d, err := j.Get(ctx, path, name)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = d.Digest.String()
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestImmutableTagDelete: deleting a tag of a repository with immutable tags
// is refused naming the rule, so delete and re-push cannot move it.
func TestImmutableTagDelete(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	j := journal(t)
	s := replica(t, reg, j)
	createRepository(t, reg, "app", ".*")
	mustPut(t, s, "app", "v1", "one")
	wantDenied(t, s.Delete(ctx, "app", "v1"), `tag "v1" is immutable (rule ".*" of Repository main.app-`)
	wantDenied(t, s.Put(ctx, "app", "v1", desc("two")), "immutable")
	want := map[string]string{"v1": desc("one").Digest.String()}
	if got := statusTags(t, reg, "app"); !equalMaps(got, want) {
		t.Fatalf("status %v, want %v", got, want)
	}
	if got := journalTags(t, j, "app"); !equalMaps(got, want) {
		t.Fatalf("journal %v, want %v", got, want)
	}
}

// TestForeignObjectUnderDerivedName: an object under the name registryd
// derives for (registry, path) that belongs to another path or Registry is
// not that repository: not read, not written.
func TestForeignObjectUnderDerivedName(t *testing.T) {
	tests := []struct {
		name           string
		registry, path string // the foreign object's spec
	}{
		{"another path", "main", "other"},
		{"another registry", "second", "app"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			reg := newRegistry(t, nil)
			foreign := &v1.Repository{
				ObjectMeta: metav1.ObjectMeta{Name: v1.RepositoryObjectName(reg.Name, "app"), Namespace: reg.Namespace},
				Spec:       v1.RepositorySpec{Registry: tc.registry, Name: tc.path},
			}
			if err := env.Client.Create(ctx, foreign); err != nil {
				t.Fatal(err)
			}
			foreign.Status.SetTag(v1.TagStatus{Name: "v1", Digest: desc("foreign").Digest.String(), PushedAt: metav1.Now()})
			if err := env.Client.Status().Update(ctx, foreign); err != nil {
				t.Fatal(err)
			}
			s := replica(t, reg, journal(t))
			if d, err := s.Get(ctx, "app", "v1"); !errors.Is(err, tags.ErrNotFound) {
				t.Errorf("Get app:v1 = %v, %v: read from %s's object", d.Digest, err, tc.path)
			}
			if names, err := s.List(ctx, "app", 0, ""); err != nil || len(names) != 0 {
				t.Errorf("List app = %v, %v", names, err)
			}
			if err := s.Delete(ctx, "app", "v1"); !errors.Is(err, tags.ErrNotFound) {
				t.Errorf("Delete app:v1 = %v", err)
			}
			err := s.Put(ctx, "app", "v2", desc("mine"))
			var e *errcode.Error
			if !errors.As(err, &e) || !strings.Contains(fmt.Sprint(e.Detail), foreign.Name) {
				t.Errorf("Put app:v2 = %v, want an error naming the object %s", err, foreign.Name)
			}
			if got := statusTags(t, reg, "app"); len(got) != 1 || got["v1"] != desc("foreign").Digest.String() {
				t.Errorf("the foreign object's tags are now %v", got)
			}
		})
	}
}
