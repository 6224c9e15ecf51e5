package controllers_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestTagPushesCostTheOperatorNothing writes tags into a Repository's
// status as registryd does on every push: neither the Registry nor the
// Repository reconciler may send the API server anything for them.
func TestTagPushesCostTheOperatorNothing(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	createRegistry(t, ns, "main", nil)
	createRepository(t, ns, "app", "main", "app", v1.DeletionRetain)
	eventually(t, "settled", func() error {
		var reg v1.Registry
		if err := get(&reg, ns, "main"); err != nil {
			return err
		}
		cond, err := repoCondition(ns, "app", "Ready")
		if err != nil || cond == nil || reg.Status.Repositories != 1 {
			return fmt.Errorf("registry counts %d repositories, repository Ready %v (%v)", reg.Status.Repositories, cond, err)
		}
		return nil
	})
	time.Sleep(time.Second) // let the last reconciles finish
	reads, writes := len(operator.requests.readsIn(ns)), len(operator.requests.writesIn(ns))

	const pushes = 20
	for i := range pushes {
		eventually(t, "push", func() error {
			var repo v1.Repository
			if err := get(&repo, ns, "app"); err != nil {
				return err
			}
			repo.Status.SetTag(v1.TagStatus{Name: fmt.Sprintf("v%d", i), Digest: "sha256:" + strings.Repeat("a", 64), PushedAt: metav1.Now()})
			return env.Client.Status().Update(ctx, &repo)
		})
	}
	time.Sleep(2 * time.Second)
	gotReads, gotWrites := operator.requests.readsIn(ns)[reads:], operator.requests.writesIn(ns)[writes:]
	t.Logf("%d tag pushes: the operator sent %d reads and %d writes", pushes, len(gotReads), len(gotWrites))
	if len(gotReads)+len(gotWrites) > 0 {
		t.Errorf("tag pushes made the operator send:\n%s\n%s", strings.Join(gotReads, "\n"), strings.Join(gotWrites, "\n"))
	}
}

// TestOperatorMemory fills the cluster with what the operator must not
// hold: 2,500 Secrets and 2,500 ConfigMaps of 10 KiB that are none of its
// business, beside a Registry with 100 Repositories. The operator, started
// afresh over it, must keep its heap under 64 MiB.
func TestOperatorMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills the API server with 50 MB of objects")
	}
	ctx := context.Background()
	ns := newNamespace(t)
	unrelated := newNamespace(t)
	defer func() {
		for _, obj := range []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}} {
			_ = env.Client.DeleteAllOf(ctx, obj, client.InNamespace(unrelated))
		}
	}()
	reg := createRegistry(t, ns, "main", nil)
	data := strings.Repeat("x", 10<<10)
	const objects, repositories, workers = 5000, 100, 32
	start := time.Now()
	work := make(chan func() error)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := f(); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range objects {
		work <- func() error {
			meta := metav1.ObjectMeta{Name: fmt.Sprintf("unrelated-%d", i), Namespace: unrelated}
			if i%2 == 0 {
				return env.Client.Create(ctx, &corev1.Secret{ObjectMeta: meta, StringData: map[string]string{"data": data}})
			}
			return env.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"data": data}})
		}
	}
	for i := range repositories {
		work <- func() error {
			return env.Client.Create(ctx, repository(reg, i))
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	t.Logf("created %d unrelated objects of 10 KiB and %d Repositories in %v", objects, repositories, time.Since(start).Round(time.Millisecond))

	counted := func(n int32) func() error {
		return func() error {
			var reg v1.Registry
			if err := get(&reg, ns, "main"); err != nil {
				return err
			}
			if reg.Status.Repositories != n {
				return fmt.Errorf("%d repositories, want %d", reg.Status.Repositories, n)
			}
			return nil
		}
	}
	eventually(t, "every Repository counted", counted(repositories))

	stopOperator()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	startOperatorAgain(t)
	// One more, counted: the restarted operator's caches are synced and
	// its reconcilers run.
	if err := env.Client.Create(ctx, repository(reg, repositories)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the restarted operator counts", counted(repositories+1))
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// The operator runs in the test process: the whole process's heap is
	// an upper bound of the operator's.
	t.Logf("heap in use: %.1f MiB with the operator stopped, %.1f MiB with it running over the cluster",
		float64(before.HeapInuse)/(1<<20), float64(after.HeapInuse)/(1<<20))
	if after.HeapInuse > 64<<20 {
		t.Errorf("heap in use %.1f MiB, want < 64 MiB", float64(after.HeapInuse)/(1<<20))
	}
	// The unrelated Secrets alone are 25 MB: a cache holding them (as an
	// informer on every Secret did: 39 MiB in use) grows the heap by more.
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 16<<20 {
		t.Errorf("the operator's start grew the heap by %.1f MiB: it holds objects that are none of its business", float64(grown)/(1<<20))
	}
}

// repository is the i-th Repository of reg, owned by it as registryd makes them.
func repository(reg *v1.Registry, i int) *v1.Repository {
	return &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("repo-%d", i), Namespace: reg.Namespace,
			OwnerReferences: []metav1.OwnerReference{v1.RegistryOwnerReference(reg)}},
		Spec: v1.RepositorySpec{Registry: reg.Name, Name: fmt.Sprintf("team/app-%d", i)},
	}
}
