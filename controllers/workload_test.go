package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
