package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// DeleteRegistriesOptions select the Registries DeleteRegistries deletes.
type DeleteRegistriesOptions struct {
	Namespace string
	Selector  labels.Selector
	// Poll is how often it looks again (default 1s).
	Poll time.Duration
}

// DeleteRegistries deletes the selected Registries and waits, while the
// operator still runs, until they are gone with what the operator removes
// for them: the Repositories whose deletionPolicy: Delete cleans the bucket,
// and the cluster-scoped auth-delegator binding. The chart's pre-delete hook
// runs it (`manager delete-registries`) so `helm uninstall` does not remove
// the operator before the Registry it installed. ctx bounds the wait.
func DeleteRegistries(ctx context.Context, c client.Client, opts DeleteRegistriesOptions) error {
	poll := opts.Poll
	if poll <= 0 {
		poll = time.Second
	}
	sel := opts.Selector
	if sel == nil {
		sel = labels.Everything()
	}
	var list v1.RegistryList
	if err := c.List(ctx, &list, client.InNamespace(opts.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return fmt.Errorf("listing Registries: %w", err)
	}
	for i := range list.Items {
		if err := c.Delete(ctx, &list.Items[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting Registry %s/%s: %w", list.Items[i].Namespace, list.Items[i].Name, err)
		}
	}
	for i := range list.Items {
		reg := &list.Items[i]
		for {
			left, err := registryLeft(ctx, c, reg)
			if err != nil {
				return err
			}
			if left == "" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for Registry %s/%s: %s is still there: %w", reg.Namespace, reg.Name, left, ctx.Err())
			case <-time.After(poll):
			}
		}
	}
	return nil
}

// registryLeft names what of a deleted Registry is still there, "" when
// nothing is.
func registryLeft(ctx context.Context, c client.Client, reg *v1.Registry) (string, error) {
	err := c.Get(ctx, client.ObjectKeyFromObject(reg), &v1.Registry{})
	switch {
	case err == nil:
		return "the Registry", nil
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("reading Registry %s/%s: %w", reg.Namespace, reg.Name, err)
	}
	err = c.Get(ctx, client.ObjectKey{Name: authDelegatorName(reg)}, &rbacv1.ClusterRoleBinding{})
	switch {
	case err == nil:
		return "ClusterRoleBinding " + authDelegatorName(reg), nil
	case apierrors.IsNotFound(err), errors.Is(err, context.Canceled):
		return "", nil
	default:
		return "", fmt.Errorf("reading ClusterRoleBinding %s: %w", authDelegatorName(reg), err)
	}
}
