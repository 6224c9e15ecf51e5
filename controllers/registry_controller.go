package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
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

	// applied remembers what was last applied to each child.
	applied appliedChildren
	// credentials keeps storage credentials for Repository cleanup.
	credentials *credentialSnapshots
}

// registryScope carries what one reconcile learns from phase to phase.
type registryScope struct {
	reg    *v1.Registry
	status v1.RegistryStatus
	deploy *appsv1.Deployment // as the API server returned it after apply
	repos  []v1.Repository    // the Registry's Repositories, from the cache
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
		if apierrors.IsNotFound(err) {
			r.applied.forget(req.Namespace, req.Name)
			// Gone without a finalizer: its cluster-scoped binding is
			// collected here, or at the operator's next start (the
			// binding watch maps every binding to its Registry).
			gone := &v1.Registry{}
			gone.Namespace, gone.Name = req.Namespace, req.Name
			return ctrl.Result{}, r.deleteAuthDelegator(ctx, gone)
		}
		return ctrl.Result{}, err
	}
	if !reg.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, reg)
	}
	s := &registryScope{reg: reg, status: *reg.Status.DeepCopy()}
	err := runPhases(ctx, s,
		r.reconcileRepositories,
		r.reconcileUsage,
		r.reconcileServiceAccount,
		r.reconcileRBAC,
		r.reconcileAuthDelegator,
		r.reconcileAuthSecret,
		r.reconcileHTTPSecret,
		r.reconcileStorage,
		r.reconcileJournalImport,
		r.reconcileVolume,
		r.reconcileDeployment,
		r.reconcileService,
		r.reconcileIngress,
		r.reconcilePDB,
		r.reconcileGC,
		r.reconcileGCRequest,
		r.reconcileGCStatus,
	)
	if namespaceTerminating(err) {
		// The namespace is going away with the Registry: nothing to
		// converge, and no error worth a stack trace.
		return ctrl.Result{}, nil
	}
	r.summarize(s, err)
	if perr := r.patchStatus(ctx, s); perr != nil {
		if apierrors.IsConflict(perr) && err == nil {
			// Built from a cached copy older than the stored one: the
			// next pass reads the newer one (the watch brings it).
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		err = errors.Join(err, perr)
	}
	if err != nil {
		return ctrl.Result{}, err // retried with backoff
	}
	return ctrl.Result{RequeueAfter: s.requeueAfter}, nil
}

// patchStatus writes the status built during the reconcile, once, and not at
// all when nothing changed. The patch is conditional on the resourceVersion
// read: a merge patch replaces the whole conditions list, so one built from
// a stale cached copy would rewrite a condition the stored object already
// has, with a new lastTransitionTime (seen as a flake of
// TestFailingProbeIsQuiet).
func (r *RegistryReconciler) patchStatus(ctx context.Context, s *registryScope) error {
	if equality.Semantic.DeepEqual(s.reg.Status, s.status) {
		return nil
	}
	base := s.reg.DeepCopy()
	s.reg.Status = s.status
	if err := r.Status().Patch(ctx, s.reg, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patching status: %w", client.IgnoreNotFound(err))
	}
	return nil
}

// reconcileRepositories counts the Registry's Repositories and keeps the
// cleanup finalizer while some of them must have their bucket content
// deleted (deletionPolicy: Delete): the Registry, which says where that
// bucket is, must outlive them. Without such Repositories the Registry
// carries no finalizer, and goes without the operator.
func (r *RegistryReconciler) reconcileRepositories(ctx context.Context, s *registryScope) error {
	var repos v1.RepositoryList
	if err := r.List(ctx, &repos, client.InNamespace(s.reg.Namespace), client.MatchingFields{indexRepositoryRegistry: s.reg.Name}); err != nil {
		return fmt.Errorf("listing repositories: %w", err)
	}
	s.repos = repos.Items
	s.status.Repositories = int32(len(repos.Items))
	want := slices.ContainsFunc(repos.Items, func(repo v1.Repository) bool { return r.needsCleanup(s.reg, &repo) })
	if want && !r.credentials.has(s.reg) {
		// After a restart: before a deleted namespace takes the Secret.
		if _, err := r.credentials.read(ctx, r.APIReader, s.reg); err != nil {
			return err
		}
	}
	base := s.reg.DeepCopy()
	// An older operator's finalizer for the auth-delegator binding, which
	// is now collected without one.
	controllerutil.RemoveFinalizer(s.reg, legacyClusterResourcesFinalizer)
	if want {
		controllerutil.AddFinalizer(s.reg, repositoryCleanupFinalizer)
	} else {
		controllerutil.RemoveFinalizer(s.reg, repositoryCleanupFinalizer)
	}
	if slices.Equal(base.Finalizers, s.reg.Finalizers) {
		return nil
	}
	if err := r.Patch(ctx, s.reg, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("updating finalizers: %w", err)
	}
	return nil
}

// reconcileDelete deletes the Registry's Repositories and waits until those
// with deletionPolicy: Delete have cleaned the bucket (their own finalizer),
// then lets the Registry go. The garbage collector would delete them too,
// but only once the Registry is gone, and they need it.
func (r *RegistryReconciler) reconcileDelete(ctx context.Context, reg *v1.Registry) error {
	if err := r.deleteAuthDelegator(ctx, reg); err != nil {
		return err
	}
	if controllerutil.ContainsFinalizer(reg, repositoryCleanupFinalizer) {
		var repos v1.RepositoryList
		if err := r.List(ctx, &repos, client.InNamespace(reg.Namespace), client.MatchingFields{indexRepositoryRegistry: reg.Name}); err != nil {
			return fmt.Errorf("listing repositories: %w", err)
		}
		waiting := 0
		for i := range repos.Items {
			repo := &repos.Items[i]
			if repo.DeletionTimestamp.IsZero() {
				if err := r.Delete(ctx, repo); client.IgnoreNotFound(err) != nil {
					return fmt.Errorf("deleting Repository %s: %w", repo.Name, err)
				}
			}
			if controllerutil.ContainsFinalizer(repo, v1.RepositoryFinalizer) {
				waiting++
			}
		}
		if waiting > 0 {
			return nil // their deletion re-queues the Registry
		}
	}
	if !controllerutil.ContainsFinalizer(reg, repositoryCleanupFinalizer) && !controllerutil.ContainsFinalizer(reg, legacyClusterResourcesFinalizer) {
		return nil
	}
	base := reg.DeepCopy()
	controllerutil.RemoveFinalizer(reg, repositoryCleanupFinalizer)
	controllerutil.RemoveFinalizer(reg, legacyClusterResourcesFinalizer)
	if err := r.Patch(ctx, reg, client.MergeFrom(base)); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("removing finalizers: %w", err)
	}
	r.credentials.forget(reg.UID)
	return nil
}

// SetupWithManager watches Registries, every child they own, the
// cluster-scoped auth-delegator binding and the Repositories they count.
// registryWorkers is how many Registries are reconciled in parallel.
const registryWorkers = 4

// conflictRetry is how soon a Registry whose status patch met a newer
// stored object is reconciled again.
const conflictRetry = 200 * time.Millisecond

func (r *RegistryReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		// Not on its own status writes: those would re-run every phase
		// (and the storage probe) at once, in a loop while status changes.
		For(&v1.Registry{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{},
			predicate.AnnotationChangedPredicate{}, deletionStarted()))).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		// Not Secrets: the HTTP secret is read directly (no Secret cache,
		// no list/watch on Secrets); a deleted one is made again at the
		// next reconcile.
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&networkingv1.Ingress{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&batchv1.CronJob{}).
		// Collection Jobs: the CronJob's own and those asked for by
		// annotation (owned by the Registry), found by their labels;
		// a finished one fills status.gc.
		Watches(&batchv1.Job{}, handler.EnqueueRequestsFromMapFunc(registryOfLabelled)).
		// The claim of a file:// bucket is labelled, not owned: it outlives
		// the Registry.
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(registryOfLabelled)).
		Watches(&rbacv1.ClusterRoleBinding{}, handler.EnqueueRequestsFromMapFunc(registryFromLabels)).
		// Repositories come and go, change policy or lose their finalizer
		// (count, cleanup finalizer); a tag push (a status write) is none
		// of the Registry's business.
		Watches(&v1.Repository{}, repositoryEvents{},
			builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, deletionStarted()))).
		// Several at once: one Registry whose storage hangs until the probe
		// timeout must not hold up every other Registry.
		WithOptions(controller.Options{MaxConcurrentReconciles: registryWorkers}).
		Named("registry").
		Complete(r)
}

// namespaceTerminating: a write was refused because the namespace is being
// deleted.
func namespaceTerminating(err error) bool {
	if err == nil {
		return false
	}
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			if namespaceTerminating(e) {
				return true
			}
		}
	}
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

// deletionStarted passes the update that sets deletionTimestamp or changes
// finalizers, which does not always change the generation.
func deletionStarted() predicate.Funcs {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		return !e.ObjectNew.GetDeletionTimestamp().Equal(e.ObjectOld.GetDeletionTimestamp()) ||
			!slices.Equal(e.ObjectNew.GetFinalizers(), e.ObjectOld.GetFinalizers())
	}}
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

// registryOfLabelled maps a namespaced object the operator labelled (a
// claim, a collection Job) to its Registry.
func registryOfLabelled(_ context.Context, obj client.Object) []reconcile.Request {
	l := obj.GetLabels()
	if l[labelManagedBy] != fieldManager || l[labelRegistry] == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: l[labelRegistry]}}}
}

// repositoryCountDelay is how long a new Repository that needs no cleanup
// waits before its Registry is reconciled: it only moves
// status.repositories, and a CI fleet creating repositories by push would
// otherwise run one whole Registry reconcile per new repository (the
// queue folds only what arrives while one is waiting).
const repositoryCountDelay = time.Second

// repositoryEvents enqueues a Repository's Registry: after
// repositoryCountDelay for the creation of one with deletionPolicy Retain,
// at once for everything else (a Delete policy moves the Registry's
// cleanup finalizer, which must not lag behind a Registry deletion).
type repositoryEvents struct{}

func (repositoryEvents) Create(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	repo, ok := e.Object.(*v1.Repository)
	if !ok || repo.Spec.Registry == "" {
		return
	}
	req := reconcile.Request{NamespacedName: client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}}
	if repo.Spec.DeletionPolicy == v1.DeletionDelete {
		q.Add(req)
		return
	}
	q.AddAfter(req, repositoryCountDelay)
}

func (repositoryEvents) Update(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	enqueueRegistryOf(e.ObjectOld, q)
	enqueueRegistryOf(e.ObjectNew, q)
}

func (repositoryEvents) Delete(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	enqueueRegistryOf(e.Object, q)
}

func (repositoryEvents) Generic(_ context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	enqueueRegistryOf(e.Object, q)
}

func enqueueRegistryOf(obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	for _, req := range registryOfRepository(context.Background(), obj) {
		q.Add(req)
	}
}

func registryOfRepository(_ context.Context, obj client.Object) []reconcile.Request {
	repo, ok := obj.(*v1.Repository)
	if !ok || repo.Spec.Registry == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}}}
}
