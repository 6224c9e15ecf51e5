package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestRegistryUsage: with spec.quota set the operator counts status.usage
// from the Repositories, drops a reservation of a write that died
// (older than v1.UsageReservationStale), marks one in flight recounted,
// counts a deleted Repository out, and removes usage with the quota.
func TestRegistryUsage(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	for i, tags := range []int{2, 3} {
		repo := createRepository(t, ns, fmt.Sprintf("r%d", i), "main", fmt.Sprintf("app%d", i), v1.DeletionRetain)
		// The operator writes the new Repository too (conditions): retried
		// on a fresh read, as registryd's status updates are.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), repo); err != nil {
				return err
			}
			for j := range tags {
				repo.Status.SetTag(v1.TagStatus{Name: fmt.Sprint("t", j), Digest: fmt.Sprintf("sha256:%063d%d", i, j), PushedAt: metav1.Now(), ContentSize: 100})
			}
			repo.Status.Recount()
			return env.Client.Status().Update(ctx, repo)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Quota = &v1.RegistryQuota{Bytes: resource.NewQuantity(1<<20, resource.BinarySI), Tags: ptr.To[int64](100)}
	})
	usage := func() (*v1.QuotaUsage, error) {
		var live v1.Registry
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reg), &live); err != nil {
			return nil, err
		}
		return live.Status.Usage, nil
	}
	wantCount := func(bytes, tags int64) func() error {
		return func() error {
			u, err := usage()
			switch {
			case err != nil:
				return err
			case u == nil || u.CountedAt == nil:
				return fmt.Errorf("no usage counted: %+v", u)
			case u.Bytes != bytes || u.Tags != tags:
				return fmt.Errorf("usage %d bytes, %d tags; want %d and %d", u.Bytes, u.Tags, bytes, tags)
			}
			return nil
		}
	}
	eventually(t, "the first count", wantCount(500, 5))

	// Two reservations, as registryd makes them: one of a write that died
	// ten minutes ago, one in flight.
	var live v1.Registry
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reg), &live); err != nil {
			return err
		}
		live.Status.Usage.Pending = twoReservations()
		return env.Client.Status().Update(ctx, &live)
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a recount keeping the live reservation only, marked", func() error {
		u, err := usage()
		if err != nil {
			return err
		}
		return keptLiveReservation(u)
	})

	if err := env.Client.Delete(ctx, &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: "r1", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted Repository counted out", wantCount(200, 2))

	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reg), &live); err != nil {
			return err
		}
		live.Spec.Quota = nil
		return env.Client.Update(ctx, &live)
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "usage removed with the quota", func() error {
		if u, err := usage(); err != nil || u != nil {
			return fmt.Errorf("usage %+v (%v), want none", u, err)
		}
		return nil
	})
}

// twoReservations are what registryd leaves in status.usage.pending: one
// of a write that died ten minutes ago, one in flight.
func twoReservations() []v1.UsageReservation {
	return []v1.UsageReservation{
		{ID: "died", Bytes: 1000, Tags: 1, At: metav1.NewTime(time.Now().Add(-10 * time.Minute))},
		{ID: "flying", Bytes: 200, Tags: 1, At: metav1.Now()},
	}
}

// keptLiveReservation: a recount of twoReservations kept the one in
// flight alone, marked recounted.
func keptLiveReservation(u *v1.QuotaUsage) error {
	if len(u.Pending) != 1 || u.Pending[0].ID != "flying" || !u.Pending[0].Recounted {
		return fmt.Errorf("pending %+v, want flying alone, recounted", u.Pending)
	}
	return nil
}
