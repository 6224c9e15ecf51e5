package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// RegistryReconciler turns a Registry into registryd's ServiceAccount, RBAC,
// HTTP secret, Deployment, Service, Ingress and PodDisruptionBudget.
type RegistryReconciler struct {
	client.Client
	// APIReader reads past the cache, where a just-written object must be seen.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Options

	// imported maps a Registry's UID to the storage location whose journal
	// this process has imported (reconcileJournalImport).
	imported sync.Map
}

// registryScope carries what one reconcile learns from phase to phase.
type registryScope struct {
	reg    *v1.Registry
	status v1.RegistryStatus
	deploy *appsv1.Deployment // as the API server returned it after apply
	// requeueAfter re-runs the storage probe; the shortest wish wins.
	requeueAfter time.Duration
}

func (s *registryScope) requeue(d time.Duration) {
	if s.requeueAfter == 0 || d < s.requeueAfter {
		s.requeueAfter = d
	}
}

// Reconcile runs every phase, then writes status once.
func (r *RegistryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	reg := &v1.Registry{}
	if err := r.Get(ctx, req.NamespacedName, reg); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !reg.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, reg)
	}
	s := &registryScope{reg: reg, status: *reg.Status.DeepCopy()}
	err := runPhases(ctx, s,
		r.reconcileFinalizer,
		r.reconcileServiceAccount,
		r.reconcileRBAC,
		r.reconcileAuthDelegator,
		r.reconcileAuthSecret,
		r.reconcileHTTPSecret,
		r.reconcileStorage,
		r.reconcileJournalImport,
		r.reconcileDeployment,
		r.reconcileService,
		r.reconcileIngress,
		r.reconcilePDB,
		r.reconcileRepositoryCount,
	)
	r.summarize(s, err)
	if perr := r.patchStatus(ctx, s); perr != nil {
		err = errors.Join(err, perr)
	}
	if err != nil {
		return ctrl.Result{}, err // retried with backoff
	}
	return ctrl.Result{RequeueAfter: s.requeueAfter}, nil
}

// patchStatus writes the status built during the reconcile, once.
func (r *RegistryReconciler) patchStatus(ctx context.Context, s *registryScope) error {
	base := s.reg.DeepCopy()
	s.reg.Status = s.status
	if err := r.Status().Patch(ctx, s.reg, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("patching status: %w", client.IgnoreNotFound(err))
	}
	return nil
}

// reconcileFinalizer keeps a finalizer while the Registry owns cluster-scoped
// objects, which owner references cannot clean up.
func (r *RegistryReconciler) reconcileFinalizer(ctx context.Context, s *registryScope) error {
	want := s.reg.Spec.Auth.Mode == v1.AuthKubernetes
	if want == controllerutil.ContainsFinalizer(s.reg, clusterResourcesFinalizer) {
		return nil
	}
	base := s.reg.DeepCopy()
	if want {
		controllerutil.AddFinalizer(s.reg, clusterResourcesFinalizer)
	} else {
		// Only once the cluster-scoped objects are gone.
		if err := r.deleteAuthDelegator(ctx, s.reg); err != nil {
			return err
		}
		controllerutil.RemoveFinalizer(s.reg, clusterResourcesFinalizer)
	}
	if err := r.Patch(ctx, s.reg, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("updating finalizers: %w", err)
	}
	return nil
}

// reconcileDelete removes what owner references cannot, then lets go.
func (r *RegistryReconciler) reconcileDelete(ctx context.Context, reg *v1.Registry) error {
	if !controllerutil.ContainsFinalizer(reg, clusterResourcesFinalizer) {
		return nil
	}
	if err := r.deleteAuthDelegator(ctx, reg); err != nil {
		return err
	}
	base := reg.DeepCopy()
	controllerutil.RemoveFinalizer(reg, clusterResourcesFinalizer)
	return client.IgnoreNotFound(r.Patch(ctx, reg, client.MergeFrom(base)))
}

// SetupWithManager watches Registries, every child they own, the
// cluster-scoped auth-delegator binding and the Repositories they count.
func (r *RegistryReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Registry{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&corev1.Secret{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&networkingv1.Ingress{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Watches(&rbacv1.ClusterRoleBinding{}, handler.EnqueueRequestsFromMapFunc(registryFromLabels)).
		Watches(&v1.Repository{}, handler.EnqueueRequestsFromMapFunc(registryOfRepository)).
		Named("registry").
		Complete(r)
}

// registryFromLabels maps a cluster-scoped child back to its Registry.
func registryFromLabels(_ context.Context, obj client.Object) []reconcile.Request {
	l := obj.GetLabels()
	name, ns := l[labelRegistry], l[labelRegistryNamespace]
	if name == "" || ns == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: ns, Name: name}}}
}

func registryOfRepository(_ context.Context, obj client.Object) []reconcile.Request {
	repo, ok := obj.(*v1.Repository)
	if !ok || repo.Spec.Registry == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}}}
}
