package kube_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestSplitQuotaAcrossReplicas: a repository's quota (tags, bytes) and the
// Registry's tag limit hold exactly once its tags are split over TagShards
// (8 tags an object here): three replicas, 150 concurrent pushes of
// distinct tags and content, room for 40. Exactly 40 are accepted, though
// they land in different shards whose writes are not conditional on each
// other, and the tags written are exactly those accepted.
func TestSplitQuotaAcrossReplicas(t *testing.T) {
	const room, n, each = 40, 150, 100
	tests := []struct {
		name  string
		quota *v1.RepositoryQuota
		limit int32
	}{
		{"tags", &v1.RepositoryQuota{Tags: ptr.To[int32](room)}, 0},
		{"bytes", &v1.RepositoryQuota{Bytes: resource.NewQuantity(room*each, resource.DecimalSI)}, 0},
		{"maxTagsPerRepository", nil, room},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			reg := newRegistry(t, func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = tc.limit })
			if tc.quota != nil {
				createQuotaRepository(t, reg, "app", *tc.quota)
			}
			j := journal(t)
			small := func(o *kube.Options) { o.MaxTagsPerObject = 8 }
			replicas := []*kube.Store{
				replicaWith(t, env.Config, reg, j, small),
				replicaWith(t, env.Config, reg, j, small),
				replicaWith(t, env.Config, reg, j, small),
			}
			var won, denied atomic.Int64
			accepted := map[string]string{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					tag := fmt.Sprintf("t%03d", i)
					err := replicas[i%3].PutContent(ctx, "app", tag, desc(tag), each)
					var e *errcode.Error
					switch {
					case err == nil:
						won.Add(1)
						mu.Lock()
						accepted[tag] = desc(tag).Digest.String()
						mu.Unlock()
					case errors.As(err, &e) && e.Code == errcode.Denied:
						denied.Add(1)
					default:
						t.Errorf("Put %s: %v", tag, err)
					}
				})
			}
			wg.Wait()
			t.Logf("%d pushes of %d bytes, room for %d, 3 replicas, 8 tags an object: %d accepted, %d refused", n, each, room, won.Load(), denied.Load())
			if won.Load() != room {
				t.Errorf("%d accepted, want %d", won.Load(), room)
			}
			repo := liveRepository(t, reg, "app")
			if !repo.Status.TagsSplit {
				t.Fatal("the repository's tags did not split: the test tests nothing")
			}
			got := map[string]string{}
			for _, tag := range tagTree(t, repo).All() {
				got[tag.Name] = tag.Digest
			}
			if !equalMaps(got, accepted) {
				t.Errorf("the shards hold %d tags, the accepted pushes %d", len(got), len(accepted))
			}
			if got := journalTags(t, j, "app"); !equalMaps(got, accepted) {
				t.Errorf("the journal holds %d tags, the accepted pushes %d", len(got), len(accepted))
			}
			wantUsage(t, reg, room, room*each)

			// Deletes free room at once: 5 deleted through different
			// replicas, then 20 racing pushes: exactly 5 go in.
			var freed []string
			for tag := range accepted {
				if len(freed) < 5 {
					freed = append(freed, tag)
				}
			}
			for i, tag := range freed {
				if err := replicas[i%3].Delete(ctx, "app", tag); err != nil {
					t.Fatalf("delete %s: %v", tag, err)
				}
			}
			won.Store(0)
			for i := range 20 {
				wg.Go(func() {
					tag := fmt.Sprintf("u%02d", i)
					if err := replicas[i%3].PutContent(ctx, "app", tag, desc(tag), each); err == nil {
						won.Add(1)
					}
				})
			}
			wg.Wait()
			if won.Load() != 5 {
				t.Errorf("after 5 deletes, %d of 20 pushes accepted; want 5", won.Load())
			}
			wantUsage(t, reg, room, room*each)
		})
	}
}

// wantUsage checks the split repository app's status.usage: tags and
// bytes exactly, nothing left in flight.
func wantUsage(t *testing.T, reg *v1.Registry, tags, bytes int64) {
	t.Helper()
	u := liveRepository(t, reg, "app").Status.Usage
	switch {
	case u == nil:
		t.Error("status.usage not kept")
	case u.Tags != tags || u.Bytes != bytes || len(u.Pending) != 0:
		t.Errorf("status.usage: %d tags, %d bytes, %d in flight; want %d, %d, 0", u.Tags, u.Bytes, len(u.Pending), tags, bytes)
	}
}
