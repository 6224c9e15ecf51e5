package kube_test

import (
	"context"
	"errors"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// brokenJournal is a journal whose reads fail (a bucket outage); writes
// pass through.
type brokenJournal struct{ tags.Store }

func (brokenJournal) Get(context.Context, string, string) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, errors.New("bucket unreachable")
}

// TestCacheMissAsksTheJournal: a tag read that misses the cache asks the
// journal before the API server. A tag another replica acknowledged while
// this replica's cache was frozen resolves; a tag nobody pushed is a miss
// with no live read (the HEAD before every first push); a deleted Retain
// Repository, whose journal stays, is not served; and a journal that
// cannot answer leaves the live read to decide.
func TestCacheMissAsksTheJournal(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	j := journal(t)
	x, gate := frozenReplica(t, reg, j)
	y := replica(t, reg, j)
	one := desc("one").Digest

	gate.freeze()
	mustPut(t, y, "team/app", "v1", "one")
	live := x.LiveReads()
	if got, err := x.Get(ctx, "team/app", "v1"); err != nil || got.Digest != one {
		t.Fatalf("tag pushed through another replica while the cache was frozen: %v, %v; want %s", got.Digest, err, one)
	}
	if x.LiveReads() != live+1 {
		t.Errorf("journal hit: %v live reads, want 1 (the confirmation)", x.LiveReads()-live)
	}
	live = x.LiveReads()
	for _, c := range []struct{ path, tag string }{{"team/app", "v2"}, {"team/new", "v1"}} {
		if _, err := x.Get(ctx, c.path, c.tag); !errors.Is(err, tags.ErrNotFound) {
			t.Errorf("%s:%s, never pushed: %v, want not found", c.path, c.tag, err)
		}
	}
	if x.LiveReads() != live {
		t.Errorf("tags nobody pushed: %v live reads, want 0", x.LiveReads()-live)
	}
	gate.thaw()

	// The Repository goes (Retain: its journal stays for a later import).
	var repo v1.Repository
	if err := env.Client.Get(ctx, keyIn(reg, v1.RepositoryObjectName(reg.Name, "team/app")), &repo); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, &repo); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Get(ctx, "team/app", "v1"); err != nil {
		t.Fatalf("journal after the Repository's deletion: %v, want the tag kept", err)
	}
	// A replica started after the deletion: its cache never had it.
	w := replica(t, reg, j)
	if _, err := w.Get(ctx, "team/app", "v1"); !errors.Is(err, tags.ErrNotFound) {
		t.Errorf("tag of a deleted Repository, still in the journal: %v, want not found", err)
	}

	// A journal that cannot answer: the live read decides.
	z, zgate := frozenReplica(t, reg, brokenJournal{j})
	zgate.freeze()
	mustPut(t, y, "team/other", "v1", "one")
	if got, err := z.Get(ctx, "team/other", "v1"); err != nil || got.Digest != one {
		t.Errorf("journal unreadable, cache frozen: %v, %v; want %s from the live read", got.Digest, err, one)
	}
	zgate.thaw()
}
