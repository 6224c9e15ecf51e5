package kube_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// TestRepositoryCountQuota: a ResourceQuota on
// count/repositories.stevedore.dev caps the repositories pushes create.
// The API server's quota admission counts creates atomically, so 3
// replicas racing to create 12 repositories into room for 3 create exactly
// 3; the others are DENIED (403, not a 503 to retry) with the quota named.
func TestRepositoryCountQuota(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	const room, pushes = 3, 12
	hard := corev1.ResourceList{"count/repositories.stevedore.dev": *resource.NewQuantity(room, resource.DecimalSI)}
	q := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "repositories", Namespace: reg.Namespace},
		Spec:       corev1.ResourceQuotaSpec{Hard: hard},
	}
	if err := env.Client.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	// No quota controller runs beside envtest's API server: its first
	// count (none used) is written by hand, as the controller would.
	q.Status = corev1.ResourceQuotaStatus{Hard: hard, Used: corev1.ResourceList{"count/repositories.stevedore.dev": resource.MustParse("0")}}
	if err := env.Client.Status().Update(ctx, q); err != nil {
		t.Fatal(err)
	}
	// The quota admission reads quotas from its own informer: wait until
	// it admits a create with the counted status (a dry run writes
	// nothing and counts nothing).
	probe := &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: reg.Namespace}, Spec: v1.RepositorySpec{Registry: reg.Name, Name: "probe"}}
	eventually(t, func() bool { return env.Client.Create(ctx, probe.DeepCopy(), client.DryRunAll) == nil })

	j := journal(t)
	replicas := []*kube.Store{replica(t, reg, j), replica(t, reg, j), replica(t, reg, j)}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created []string
		denied  int
	)
	for i := range pushes {
		wg.Go(func() {
			path := fmt.Sprintf("team/app%02d", i)
			err := replicas[i%3].Put(ctx, path, "v1", desc(path))
			mu.Lock()
			defer mu.Unlock()
			var e *errcode.Error
			switch {
			case err == nil:
				created = append(created, path)
			case errors.As(err, &e) && e.Code == errcode.Denied && strings.Contains(fmt.Sprint(e.Detail), "exceeded quota: repositories"):
				denied++
			default:
				t.Errorf("push to %s: %v, want success or DENIED naming the quota", path, err)
			}
		})
	}
	wg.Wait()
	var list v1.RepositoryList
	if err := env.Client.List(ctx, &list, client.InNamespace(reg.Namespace)); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pushes into new repositories with room for %d: %d created, %d denied; %d Repository objects", pushes, room, len(created), denied, len(list.Items))
	if len(created) != room || denied != pushes-room || len(list.Items) != room {
		t.Fatalf("created %v, %d denied, %d objects; want %d created and %d denied", created, denied, len(list.Items), room, pushes-room)
	}
	for _, path := range created {
		if got := statusTags(t, reg, path); got["v1"] != desc(path).Digest.String() {
			t.Errorf("%s: status tags %v", path, got)
		}
	}
}
