package controllers_test

import (
	"context"
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestRepositoryUsage: a Repository whose 100 tags are split over
// TagShards gets status.usage counted from the shards once it has a quota
// (registryd reserves on it); a reservation of a write that died goes, one
// in flight stays marked recounted, and drift is repaired; a Registry with
// a quota counts the split repository's tags; usage goes with the quota.
func TestRepositoryUsage(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Quota = &v1.RegistryQuota{Tags: ptr.To[int64](1000)}
	})
	repo := createRepository(t, ns, "app", "main", "app", v1.DeletionRetain)
	var all []v1.TagStatus
	for i := range 100 {
		// 50 digests, two tags each: bytes count each digest once.
		all = append(all, v1.TagStatus{Name: fmt.Sprintf("t%03d", i), Digest: fmt.Sprintf("sha256:%064d", i/2), PushedAt: metav1.Now(), ContentSize: 10})
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
		t.Fatal(err)
	}
	shards, rootTags, split := v1.LayOutTags(repo, all, 16)
	for _, sh := range shards {
		if err := env.Client.Create(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	mutateStatus := func(mutate func(*v1.Repository)) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
				return err
			}
			mutate(repo)
			return env.Client.Status().Update(ctx, repo)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	mutateStatus(func(r *v1.Repository) { r.Status.Tags, r.Status.TagsSplit = rootTags, split })
	eventually(t, "the Registry's usage counting the shards", func() error {
		var live v1.Registry
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reg), &live); err != nil {
			return err
		}
		if u := live.Status.Usage; u == nil || u.Tags != 100 {
			return fmt.Errorf("Registry usage %+v, want 100 tags", u)
		}
		return nil
	})

	usage := func() (*v1.QuotaUsage, error) {
		var live v1.Repository
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), &live)
		return live.Status.Usage, err
	}
	if u, err := usage(); err != nil || u != nil {
		t.Fatalf("usage %+v (%v) without a quota, want none", u, err)
	}
	setQuota := func(q *v1.RepositoryQuota) {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var live v1.Repository
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), &live); err != nil {
				return err
			}
			live.Spec.Quota = q
			return env.Client.Update(ctx, &live)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setQuota(&v1.RepositoryQuota{Bytes: resource.NewQuantity(1<<20, resource.BinarySI)})
	eventually(t, "the repository's usage counted from its shards", func() error {
		u, err := usage()
		switch {
		case err != nil:
			return err
		case u == nil || u.CountedAt == nil:
			return fmt.Errorf("no usage counted: %+v", u)
		case u.Tags != 100 || u.Bytes != 500:
			return fmt.Errorf("usage %d tags, %d bytes; want 100 and 500", u.Tags, u.Bytes)
		}
		return nil
	})

	mutateStatus(func(r *v1.Repository) {
		r.Status.Usage.Pending = twoReservations()
		r.Status.Usage.Tags = 7 // drift the recount repairs
	})
	eventually(t, "a recount keeping the live reservation only, marked", func() error {
		u, err := usage()
		if err != nil {
			return err
		}
		if u.Tags != 100 {
			return fmt.Errorf("usage %d tags, want 100", u.Tags)
		}
		return keptLiveReservation(u)
	})

	setQuota(nil)
	eventually(t, "usage removed with the quota", func() error {
		if u, err := usage(); err != nil || u != nil {
			return fmt.Errorf("usage %+v (%v), want none", u, err)
		}
		return nil
	})
}
