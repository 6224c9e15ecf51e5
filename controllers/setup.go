// Package controllers holds the operator's reconcilers: Registry, Repository
// and garbage collection.
package controllers

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// Options configures every reconciler of the operator.
type Options struct {
	// RegistrydImage is used when a Registry does not name an image.
	RegistrydImage string
	// ProbeStorage checks a Registry's bucket; ProbeBucket when nil.
	ProbeStorage StorageProber
	// LocalStorageReachable says the operator shares registryd's filesystem
	// (make dev, tests), so it may probe and clean file:// buckets. In a
	// cluster a file:// bucket is a volume of registryd's pod.
	LocalStorageReachable bool
	// ProbeInterval spaces out storage probes while the bucket answers
	// (default 5m); ProbeRetryInterval while it fails (default 30s).
	ProbeInterval      time.Duration
	ProbeRetryInterval time.Duration
	// StorageAllowedNetworks may be reached through a storage URL's
	// endpoint even when the endpoint policy refuses them by default
	// (loopback, link-local: cloud metadata services). bucket.DialPolicy.
	StorageAllowedNetworks []netip.Prefix
	// RetentionInterval spaces retention runs of one Repository (default
	// 1h); a spec change runs it at once.
	RetentionInterval time.Duration
	// UsageRecountInterval spaces the recounts of a Registry's
	// status.usage while spec.quota is set (default 30s).
	UsageRecountInterval time.Duration
	// Metrics, when set, gets the collectors of status-derived metrics
	// (stevedore_gc_*); main passes controller-runtime's registry.
	Metrics prometheus.Registerer
}

// SetupWithManager registers every reconciler with mgr.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1.Repository{}, indexRepositoryRegistry,
		func(o client.Object) []string { return []string{o.(*v1.Repository).Spec.Registry} }); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1.Repository{}, indexRepositoryPath,
		func(o client.Object) []string { return []string{repositoryPathKey(o.(*v1.Repository))} }); err != nil {
		return err
	}
	if opts.Metrics != nil {
		if err := opts.Metrics.Register(newGCCollector(mgr.GetClient())); err != nil {
			return fmt.Errorf("registering the gc metrics: %w", err)
		}
	}
	// Both reconcilers share the storage credentials read for cleanup.
	creds := &credentialSnapshots{}
	if err := (&RegistryReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("stevedore-registry"),
		Options:     opts,
		credentials: creds,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&RetentionReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("stevedore-retention"),
		Options:   opts,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&RepositoryReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("stevedore-repository"),
		Options:     opts,
		credentials: creds,
	}).SetupWithManager(mgr)
}

// RBAC of the operator: exactly what the reconcilers do. Children are
// server-side applied (create, patch) and deleted only where a spec change
// removes them (Ingress, PodDisruptionBudget); the rest go with their
// Registry (owner references). User Secrets are read past the cache (get,
// no list/watch); the only Secret created is the HTTP secret. The Role the
// operator makes for registryd needs the operator to hold what it grants
// (repositories create, repositories/status update, registries,
// registries/status update (usage) and events).
// Leader election's Lease is in the operator's namespace only: a Role of
// the chart and config/rbac, not a marker here.
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries/status,verbs=update;patch
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries/finalizers,verbs=update
// +kubebuilder:rbac:groups=stevedore.dev,resources=repositories,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=stevedore.dev,resources=repositories/status,verbs=update;patch
// +kubebuilder:rbac:groups=stevedore.dev,resources=tagshards,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts;persistentvolumeclaims,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterrolebindings,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=bind,resourceNames=system:auth-delegator
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;patch

// The metrics endpoint (main.go) checks each scraper's token with a
// TokenReview and its `get /metrics` with a SubjectAccessReview.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
