package kube_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"

	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestPullTimes: three replicas serve pulls of two tags of a repository;
// flushing their pull logs writes pulledAt once (the first flush; the
// others find it fresh and write nothing), to the first pull's time. A
// pull after the interval moves it; moving a tag clears it. Nothing is
// written per pull.
func TestPullTimes(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	const interval = time.Hour // no background flush during the test
	j := journal(t)
	var writes atomic.Int64
	counting := registrydConfig(&writes)
	withInterval := func(o *kube.Options) { o.PullRecordInterval = interval }
	replicas := []*kube.Store{
		replicaWith(t, counting, reg, j, withInterval),
		replicaWith(t, counting, reg, j, withInterval),
		replicaWith(t, counting, reg, j, withInterval),
	}
	mustPut(t, replicas[0], "app", "a", "one")
	mustPut(t, replicas[0], "app", "b", "two")
	mustPut(t, replicas[0], "app", "c", "three")
	pulledAt := func(tag string) *metav1.Time {
		t.Helper()
		got, _ := liveRepository(t, reg, "app").Status.FindTag(tag)
		return got.PulledAt
	}

	before := time.Now().Truncate(time.Second) // metav1.Time keeps seconds
	writes.Store(0)
	for i := range 300 {
		replicas[i%3].RecordPull("app", []string{"a", "b"}[i%2])
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("300 pulls made %d API requests, want none before a flush", n)
	}
	replicas[0].FlushPulls(ctx)
	first := liveRepository(t, reg, "app")
	for _, tag := range []string{"a", "b"} {
		if at := pulledAt(tag); at == nil || at.Time.Before(before) || at.After(time.Now()) {
			t.Fatalf("after the flush, %s pulledAt = %v, want a time since %v", tag, at, before)
		}
	}
	if at := pulledAt("c"); at != nil {
		t.Fatalf("c was never pulled, pulledAt = %v", at)
	}
	replicas[1].FlushPulls(ctx)
	replicas[2].FlushPulls(ctx)
	if again := liveRepository(t, reg, "app"); again.ResourceVersion != first.ResourceVersion {
		t.Errorf("the other replicas' flushes wrote again (resourceVersion %s -> %s) though the pulls were within the interval",
			first.ResourceVersion, again.ResourceVersion)
	}

	// A pull after the interval moves it: set a's recorded pull two
	// intervals back, then pull (once the replica's cache has the change:
	// its word may only save a write).
	var repo v1.Repository
	update(t, &repo, keyIn(reg, v1.RepositoryObjectName(reg.Name, "app")), func(o client.Object) {})
	old := metav1.NewTime(time.Now().Add(-2 * interval).Truncate(time.Second))
	a, _ := repo.Status.FindTag("a")
	a.PulledAt = &old
	repo.Status.SetTag(a)
	if err := env.Client.Status().Update(ctx, &repo); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		replicas[1].RecordPull("app", "a")
		replicas[1].FlushPulls(ctx)
		if at := pulledAt("a"); at != nil && at.After(old.Time) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a pull after the interval left pulledAt at %v", pulledAt("a"))
		}
	}
	// Moving a tag clears it: the new content was never pulled.
	mustPut(t, replicas[2], "app", "b", "other")
	if at := pulledAt("b"); at != nil {
		t.Errorf("b moved, pulledAt still %v", at)
	}
}

// TestPullLogLimit: a replica remembers pulls of at most PullLogLimit tags
// between two flushes, however many distinct tags are pulled.
func TestPullLogLimit(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	s := replicaWith(t, env.Config, reg, journal(t), func(o *kube.Options) {
		o.PullRecordInterval, o.PullLogLimit = time.Hour, 10
	})
	for i := range 20 {
		mustPut(t, s, "app", fmt.Sprintf("t%02d", i), fmt.Sprint(i))
	}
	for round := range 2 {
		// Round 1 pulls t00..t19, round 2 t10..t19; new repositories'
		// pulls come after, and count against the limit too.
		for i := 10 * round; i < 20; i++ {
			s.RecordPull("app", fmt.Sprintf("t%02d", i))
		}
		for i := range 20 {
			s.RecordPull(fmt.Sprintf("other-%d", i), "x")
		}
		s.FlushPulls(ctx)
		recorded := 0
		for _, tg := range liveRepository(t, reg, "app").Status.Tags {
			if tg.PulledAt != nil {
				recorded++
			}
		}
		// The first flush records the first 10 pulled; the second, after
		// the log was emptied, the next 10.
		if want := 10 * (round + 1); recorded != want {
			t.Fatalf("after flush %d, %d tags have a pull time, want %d", round+1, recorded, want)
		}
	}
}
