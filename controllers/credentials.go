package controllers

import (
	"context"
	"fmt"
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// credentialSnapshots keeps, per Registry that has Repositories to clean up
// (deletionPolicy: Delete), the storage credentials last read from its
// storage.secretRef. A deleted namespace takes the Secret with everything
// else, in no order, while the Repositories wait on their finalizer for the
// operator: the snapshot lets it still open the bucket then. Held in memory
// only (the operator can read the Secret anyway): a Registry reconcile
// takes one again after a restart.
type credentialSnapshots struct{ m sync.Map }

type credentialSnapshot struct {
	secret string
	env    map[string]string
}

// read returns the storage.secretRef Secret's keys, read past the cache
// (the operator caches no Secrets), and keeps them as the Registry's
// snapshot.
func (c *credentialSnapshots) read(ctx context.Context, r client.Reader, reg *v1.Registry) (map[string]string, error) {
	env, err := storageEnv(ctx, r, reg)
	if err == nil && reg.Spec.Storage.SecretRef != nil {
		c.m.Store(reg.UID, credentialSnapshot{secret: reg.Spec.Storage.SecretRef.Name, env: maps.Clone(env)})
	}
	return env, err
}

// readForCleanup is read, falling back to the snapshot when the Secret is
// already gone.
func (c *credentialSnapshots) readForCleanup(ctx context.Context, r client.Reader, reg *v1.Registry) (map[string]string, error) {
	env, err := c.read(ctx, r, reg)
	if !apierrors.IsNotFound(err) {
		return env, err
	}
	if snap, ok := c.m.Load(reg.UID); ok && snap.(credentialSnapshot).secret == reg.Spec.Storage.SecretRef.Name {
		return snap.(credentialSnapshot).env, nil
	}
	return nil, err
}

// has tells whether a snapshot of the Registry's current Secret is held.
func (c *credentialSnapshots) has(reg *v1.Registry) bool {
	snap, ok := c.m.Load(reg.UID)
	return ok && reg.Spec.Storage.SecretRef != nil && snap.(credentialSnapshot).secret == reg.Spec.Storage.SecretRef.Name
}

func (c *credentialSnapshots) forget(uid types.UID) { c.m.Delete(uid) }

// storageEnv reads the Secret named by storage.secretRef as environment
// variables; errors wrap the API error (apierrors.IsNotFound holds).
func storageEnv(ctx context.Context, r client.Reader, reg *v1.Registry) (map[string]string, error) {
	ref := reg.Spec.Storage.SecretRef
	if ref == nil {
		return nil, nil
	}
	var secret corev1.Secret
	if err := r.Get(ctx, client.ObjectKey{Namespace: reg.Namespace, Name: ref.Name}, &secret); err != nil {
		return nil, fmt.Errorf("reading storage.secretRef %s: %w", ref.Name, err)
	}
	env := make(map[string]string, len(secret.Data))
	for k, v := range secret.Data {
		env[k] = string(v)
	}
	return env, nil
}
