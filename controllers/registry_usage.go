package controllers

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// defaultUsageRecountInterval is how often the operator recounts a
// Registry's status.usage while spec.quota is set: what retention, a
// deleted Repository or a died write freed comes back within it.
const defaultUsageRecountInterval = 30 * time.Second

func (o Options) usageRecountInterval() time.Duration {
	if o.UsageRecountInterval > 0 {
		return o.UsageRecountInterval
	}
	return defaultUsageRecountInterval
}

// reconcileUsage keeps status.usage while spec.quota is set (registryd
// reserves and settles on it: registryd/tags/kube/usage.go) and removes it
// when the quota goes.
func (r *RegistryReconciler) reconcileUsage(ctx context.Context, s *registryScope) error {
	q, u := s.reg.Spec.Quota, s.reg.Status.Usage
	switch {
	case q == nil && u == nil:
		return nil
	case q != nil && u != nil && u.CountedAt != nil:
		if wait := r.usageRecountInterval() - time.Since(u.CountedAt.Time); wait > 0 {
			s.requeue(wait)
			return nil
		}
	}
	if q != nil {
		s.requeue(r.usageRecountInterval())
	}
	return r.recountUsage(ctx, client.ObjectKeyFromObject(s.reg))
}

// recountUsage sets status.usage to the sum of the Registry's Repositories
// (status.bytes, tags), with a conditional update of the Registry read
// live before the Repositories are listed live. So every write that
// settled before that read is in the sum, and a reservation made after it
// makes the update conflict (and the recount run again). Writes in flight
// stay reserved and are marked recounted: a push that then settles adds
// what the sum may already hold (usage over, never under) and a delete
// frees nothing. Reservations older than v1.UsageReservationStale are of
// writes that died, and go.
func (r *RegistryReconciler) recountUsage(ctx context.Context, key client.ObjectKey) error {
	return updateUsageLive(ctx, r.Client, r.APIReader, key, func() *v1.Registry { return &v1.Registry{} }, func(reg *v1.Registry) (bool, error) {
		if reg.Spec.Quota == nil {
			write := reg.Status.Usage != nil
			reg.Status.Usage = nil
			return write, nil
		}
		var repos v1.RepositoryList
		if err := r.APIReader.List(ctx, &repos, client.InNamespace(key.Namespace), client.MatchingFields{"spec.registry": key.Name}); err != nil {
			return false, fmt.Errorf("listing Repositories for the usage recount: %w", err)
		}
		bytes, tags, err := r.countRepositories(ctx, key, repos.Items)
		if err != nil {
			return false, err
		}
		reg.Status.Usage = reg.Status.Usage.Recounted(bytes, tags, metav1.Now())
		return true, nil
	})
}

// updateUsageLive is a usage recount's write, for a Registry and for a
// Repository: read the object live (a new one from newObj), let set change
// its status.usage (false: nothing to write) and update it conditionally
// on that read, again on a conflict (up to 5 times).
func updateUsageLive[T client.Object](ctx context.Context, c client.Client, reader client.Reader, key client.ObjectKey, newObj func() T, set func(T) (bool, error)) error {
	var err error
	for range 5 {
		obj := newObj()
		if err = reader.Get(ctx, key, obj); err != nil {
			return client.IgnoreNotFound(err)
		}
		var write bool
		if write, err = set(obj); err != nil || !write {
			return err
		}
		if err = c.Status().Update(ctx, obj); !apierrors.IsConflict(err) {
			return client.IgnoreNotFound(err)
		}
	}
	return fmt.Errorf("recounting usage: %w", err)
}

// countRepositories sums the repositories' bytes and tags. A split
// repository's are summed from its TagShards, listed live with the
// Repositories: its status.tagCount and bytes are the operator's sum of a
// moment ago, which may lack what settled since.
func (r *RegistryReconciler) countRepositories(ctx context.Context, key client.ObjectKey, repos []v1.Repository) (bytes, tags int64, err error) {
	var shards map[types.UID][]v1.TagShard
	for i := range repos {
		st := &repos[i].Status
		if !st.TagsSplit {
			bytes += st.Bytes
			tags += int64(len(st.Tags))
			continue
		}
		if shards == nil {
			var list v1.TagShardList
			if err := r.APIReader.List(ctx, &list, client.InNamespace(key.Namespace), client.MatchingLabels{v1.LabelRegistry: key.Name}); err != nil {
				return 0, 0, fmt.Errorf("listing TagShards for the usage recount: %w", err)
			}
			shards = map[types.UID][]v1.TagShard{}
			for _, sh := range list.Items {
				shards[sh.Spec.RepositoryUID] = append(shards[sh.Spec.RepositoryUID], sh)
			}
		}
		n, b := v1.NewTagTree(&repos[i], shards[repos[i].UID]).Totals()
		bytes += b
		tags += int64(n)
	}
	return bytes, tags, nil
}
