package kube_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// registryWithQuota makes a Registry with quota q and its usage counted
// (none used), as the operator's first recount would.
func registryWithQuota(t *testing.T, q v1.RegistryQuota) *v1.Registry {
	t.Helper()
	reg := newRegistry(t, func(r *v1.Registry) { r.Spec.Quota = &q })
	now := metav1.Now()
	live := &v1.Registry{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(reg), live); err != nil {
		t.Fatal(err)
	}
	live.Status.Usage = &v1.QuotaUsage{CountedAt: &now}
	if err := env.Client.Status().Update(context.Background(), live); err != nil {
		t.Fatal(err)
	}
	return reg
}

func liveUsage(t *testing.T, reg *v1.Registry) v1.QuotaUsage {
	t.Helper()
	var live v1.Registry
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(reg), &live); err != nil {
		t.Fatal(err)
	}
	if live.Status.Usage == nil {
		t.Fatal("status.usage is gone")
	}
	return *live.Status.Usage
}

// sumRepositories is what the Registry's Repositories hold, read live.
func sumRepositories(t *testing.T, reg *v1.Registry) (bytes, tags int64) {
	t.Helper()
	var list v1.RepositoryList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(reg.Namespace)); err != nil {
		t.Fatal(err)
	}
	for _, r := range list.Items {
		bytes += r.Status.Bytes
		tags += int64(len(r.Status.Tags))
	}
	return bytes, tags
}

// TestRegistryQuotaAcrossReplicas: three replicas, 60 concurrent pushes of
// distinct content of 1,000 bytes each, spread over 20 repositories, into
// a Registry with room for 10,000 bytes: exactly 10 succeed, and usage,
// settled, is exactly what the Repositories hold. Then deletes free room.
func TestRegistryQuotaAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	reg := registryWithQuota(t, v1.RegistryQuota{Bytes: resource.NewQuantity(10_000, resource.DecimalSI)})
	j := journal(t)
	replicas := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}
	const n, each = 60, 1000
	var (
		mu       sync.Mutex
		accepted []string
		denied   int
		wg       sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			path, tag := fmt.Sprintf("team/app%02d", i%20), fmt.Sprintf("t%02d", i)
			err := replicas[i%3].PutContent(ctx, path, tag, desc(tag), each)
			var e *errcode.Error
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				accepted = append(accepted, path+":"+tag)
			case errors.As(err, &e) && e.Code == errcode.Denied && strings.Contains(fmt.Sprint(e.Detail), "spec.quota.bytes"):
				denied++
			default:
				t.Errorf("push %s:%s: %v, want success or DENIED naming spec.quota.bytes", path, tag, err)
			}
		})
	}
	wg.Wait()
	u := liveUsage(t, reg)
	bytes, tags := sumRepositories(t, reg)
	t.Logf("%d pushes of %d bytes from 3 replicas into a Registry with room for 10,000: %d accepted, %d denied; usage %d bytes, %d tags, %d pending; the Repositories hold %d bytes, %d tags",
		n, each, len(accepted), denied, u.Bytes, u.Tags, len(u.Pending), bytes, tags)
	if len(accepted) != 10 || denied != n-10 {
		t.Fatalf("%d accepted, %d denied; want 10 and %d", len(accepted), denied, n-10)
	}
	if u.Bytes != 10_000 || u.Tags != 10 || len(u.Pending) != 0 || bytes != 10_000 || tags != 10 {
		t.Fatalf("usage %+v, Repositories %d bytes and %d tags; want 10000 bytes, 10 tags, none pending", u, bytes, tags)
	}

	// A delete frees its room at once (it settles), and a push fits again.
	path, tag, _ := strings.Cut(accepted[0], ":")
	if err := replicas[1].Delete(ctx, path, tag); err != nil {
		t.Fatal(err)
	}
	if u := liveUsage(t, reg); u.Bytes != 9_000 || u.Tags != 9 || len(u.Pending) != 0 {
		t.Fatalf("usage after a delete: %+v, want 9000 bytes and 9 tags", u)
	}
	if err := replicas[2].PutContent(ctx, "team/new", "v1", desc("new"), each); err != nil {
		t.Fatalf("a push into the freed room: %v", err)
	}
	wantDenied(t, replicas[0].PutContent(ctx, "team/new", "v2", desc("newer"), 1), "Registry main has no room: 1 more bytes would pass its quota of 10k")
}

// TestRegistryQuota: the tag quota, and pushes that do not grow usage pass
// a full Registry: a new tag on content its repository holds (no bytes) while
// bytes are full, a move to smaller content while both are full.
func TestRegistryQuota(t *testing.T) {
	ctx := context.Background()
	reg := registryWithQuota(t, v1.RegistryQuota{Bytes: resource.NewQuantity(1000, resource.DecimalSI), Tags: ptr.To[int64](3)})
	s := replica(t, reg, journal(t))
	steps := []struct {
		path, tag, content string
		size               int64
		want               string // "": allowed; else the DENIED detail it contains
		bytes, tags        int64  // usage after
	}{
		{"a", "1", "one", 600, "", 600, 1},
		{"b", "1", "two", 500, "Registry main has no room: 500 more bytes would pass its quota of 1k (1000 bytes; spec.quota.bytes): its repositories hold 600", 600, 1},
		{"a", "2", "one", 600, "", 600, 2},        // bytes full for 500, but this adds none
		{"b", "1", "three", 400, "", 1000, 3},     // exactly the quota
		{"b", "2", "four", 1, "no room", 1000, 3}, // both full
		{"a", "3", "one", 600, "a new tag would pass its quota of 3 tags", 1000, 3},
		{"b", "1", "five", 100, "", 700, 3}, // a move to smaller content, with both full
	}
	for _, st := range steps {
		err := s.PutContent(ctx, st.path, st.tag, desc(st.content), st.size)
		if st.want == "" && err != nil {
			t.Fatalf("push %s:%s (%d bytes): %v", st.path, st.tag, st.size, err)
		}
		if st.want != "" {
			wantDenied(t, err, st.want)
		}
		if u := liveUsage(t, reg); u.Bytes != st.bytes || u.Tags != st.tags || len(u.Pending) != 0 {
			t.Fatalf("after %s:%s: usage %+v, want %d bytes, %d tags, none pending", st.path, st.tag, u, st.bytes, st.tags)
		}
	}
	if bytes, tags := sumRepositories(t, reg); bytes != 700 || tags != 3 {
		t.Fatalf("the Repositories hold %d bytes, %d tags; want 700 and 3", bytes, tags)
	}
}

// TestRegistryQuotaClientGone: a client that leaves while its tag write is
// in flight leaks no reservation: the write's outcome is waited for, and
// settled.
func TestRegistryQuotaClientGone(t *testing.T) {
	reg := registryWithQuota(t, v1.RegistryQuota{Bytes: resource.NewQuantity(10_000, resource.DecimalSI)})
	j := &gatedJournal{Bucket: journal(t).(*tags.Bucket), entered: make(chan struct{}), release: make(chan struct{})}
	s := replica(t, reg, j)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.PutContent(ctx, "app", "v1", desc("one"), 1000) }()
	<-j.entered // reserved, and the tag write is in flight (creating the Repository)
	cancel()
	time.Sleep(100 * time.Millisecond) // the push sees its client gone
	close(j.release)
	if err := <-done; err != nil {
		t.Fatalf("the write in flight: %v", err)
	}
	if u := liveUsage(t, reg); u.Bytes != 1000 || u.Tags != 1 || len(u.Pending) != 0 {
		t.Fatalf("usage %+v after a client left mid-write; want 1000 bytes, 1 tag, none pending", u)
	}
}
