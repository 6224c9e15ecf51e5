// Package controllers holds the operator's reconcilers: Registry, Repository
// and garbage collection.
package controllers

import (
	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configures every reconciler of the operator.
type Options struct {
	// RegistrydImage is used when a Registry does not name an image.
	RegistrydImage string
}

// SetupWithManager registers every reconciler with mgr.
func SetupWithManager(mgr ctrl.Manager, opts Options) error {
	return nil
}

// RBAC of the operator: exactly what the reconcilers read and create.
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries;repositories,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries/status;repositories/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=stevedore.dev,resources=registries/finalizers;repositories/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts;secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings;clusterrolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
