package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"gocloud.dev/blob"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

const (
	// indexRepositoryPath indexes Repositories by "<registry>/<path>".
	indexRepositoryPath = "spec.registry+spec.name"
)

func repositoryPathKey(repo *v1.Repository) string { return repo.Spec.Registry + "/" + repo.Spec.Name }

// RepositoryReconciler checks a Repository's Registry and claim on its path,
// counts its tags and applies its deletionPolicy.
type RepositoryReconciler struct {
	client.Client
	// APIReader reads user Secrets, which the operator does not cache.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Options

	credentials *credentialSnapshots
	// deleted holds the last state of Repositories seen deleted, for the
	// tombstone of a Retain deletion (reconcileGone).
	deleted sync.Map
}

type repositoryScope struct {
	repo   *v1.Repository
	status v1.RepositoryStatus
	reg    *v1.Registry // nil when the Registry does not exist
}

func (r *RepositoryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	repo := &v1.Repository{}
	if err := r.Get(ctx, req.NamespacedName, repo); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.reconcileGone(ctx, req.NamespacedName)
		}
		return ctrl.Result{}, err
	}
	r.deleted.Delete(req.NamespacedName) // a new object of the same name
	if !repo.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, repo)
	}
	s := &repositoryScope{repo: repo, status: *repo.Status.DeepCopy()}
	err := runPhases(ctx, s,
		r.reconcileRegistryRef,
		r.reconcileMetadata,
		r.reconcileConflict,
		r.reconcileTagCount,
	)
	r.summarize(s, err)
	if perr := r.patchStatus(ctx, s); perr != nil {
		if apierrors.IsConflict(perr) && err == nil {
			// registryd wrote status after the cached copy this pass
			// read: the next pass reads the newer one.
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		err = errors.Join(err, perr)
	}
	if err != nil || s.reg == nil {
		return ctrl.Result{}, err
	}
	next, err := r.reconcileUsage(ctx, repo, s.reg)
	return ctrl.Result{RequeueAfter: next}, err
}

// tagCountWrong passes a status write whose tagCount is not the number of
// tags (a hand edit; registryd writes both together).
func tagCountWrong() predicate.Funcs {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		repo, ok := e.ObjectNew.(*v1.Repository)
		return ok && !repo.Status.TagsSplit && int(repo.Status.TagCount) != len(repo.Status.Tags)
	}}
}

// patchStatus writes conditions and counts once, and only when they changed.
// Tags are registryd's: the merge patch leaves them alone because this
// reconciler never changes them. The patch is conditional on the
// resourceVersion read, as the Registry's is: a tagCount (or a conditions
// list, which a merge patch replaces whole) computed from a cached copy
// must not land over a newer status registryd wrote meanwhile.
func (r *RepositoryReconciler) patchStatus(ctx context.Context, s *repositoryScope) error {
	if equality.Semantic.DeepEqual(s.repo.Status.Conditions, s.status.Conditions) &&
		s.repo.Status.TagCount == s.status.TagCount && s.repo.Status.Bytes == s.status.Bytes &&
		s.repo.Status.ObservedGeneration == s.status.ObservedGeneration {
		return nil
	}
	base := s.repo.DeepCopy()
	s.repo.Status.Conditions = s.status.Conditions
	s.repo.Status.TagCount = s.status.TagCount
	s.repo.Status.Bytes = s.status.Bytes
	s.repo.Status.ObservedGeneration = s.status.ObservedGeneration
	if err := r.Status().Patch(ctx, s.repo, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patching status: %w", client.IgnoreNotFound(err))
	}
	return nil
}

// reconcileMetadata makes the Repository a dependent of its Registry (so
// deleting the Registry deletes it) and keeps the deletion-policy finalizer
// exactly where the operator must act before the object goes: Delete, on a
// bucket the operator reaches. Everything else goes without the operator,
// so a namespace deleted while it is away is not held up.
func (r *RepositoryReconciler) reconcileMetadata(ctx context.Context, s *repositoryScope) error {
	base := s.repo.DeepCopy()
	if s.reg != nil && !hasOwner(s.repo, s.reg) {
		s.repo.OwnerReferences = append(s.repo.OwnerReferences, v1.RegistryOwnerReference(s.reg))
	}
	if r.needsCleanup(s.reg, s.repo) {
		controllerutil.AddFinalizer(s.repo, v1.RepositoryFinalizer)
		// While the Secret is there: a deleted namespace may take it first.
		if _, err := r.credentials.read(ctx, r.APIReader, s.reg); err != nil {
			return err
		}
	} else {
		controllerutil.RemoveFinalizer(s.repo, v1.RepositoryFinalizer)
	}
	if equality.Semantic.DeepEqual(base.ObjectMeta, s.repo.ObjectMeta) {
		return nil
	}
	if err := r.Patch(ctx, s.repo, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("updating owner and finalizers: %w", err)
	}
	return nil
}

// needsCleanup: deleting repo must delete what the bucket holds for it, and
// the operator can reach that bucket.
func (o Options) needsCleanup(reg *v1.Registry, repo *v1.Repository) bool {
	return repo.Spec.DeletionPolicy == v1.DeletionDelete && reg != nil &&
		!o.storageOutOfReach(reg) && !usesPodIdentity(reg)
}

func hasOwner(obj metav1.Object, reg *v1.Registry) bool {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.UID == reg.UID {
			return true
		}
	}
	return false
}

func (r *RepositoryReconciler) reconcileRegistryRef(ctx context.Context, s *repositoryScope) error {
	gen := s.repo.Generation
	reg := &v1.Registry{}
	err := r.Get(ctx, client.ObjectKey{Namespace: s.repo.Namespace, Name: s.repo.Spec.Registry}, reg)
	switch {
	case apierrors.IsNotFound(err):
		if !isConditionFalse(s.status.Conditions, ConditionRegistryFound) {
			r.Recorder.Eventf(s.repo, nil, corev1.EventTypeWarning, ReasonRegistryNotFound, "Resolve",
				"Registry %s does not exist in namespace %s", s.repo.Spec.Registry, s.repo.Namespace)
		}
		setCondition(&s.status.Conditions, gen, ConditionRegistryFound, metav1.ConditionFalse, ReasonRegistryNotFound,
			fmt.Sprintf("Registry %s does not exist in namespace %s", s.repo.Spec.Registry, s.repo.Namespace))
		return nil
	case err != nil:
		return fmt.Errorf("reading Registry %s: %w", s.repo.Spec.Registry, err)
	}
	s.reg = reg
	setCondition(&s.status.Conditions, gen, ConditionRegistryFound, metav1.ConditionTrue, ReasonRegistryFound, "")
	return nil
}

// reconcileConflict lets the oldest Repository claiming a (registry, path)
// keep it; every newer one gets Conflict=True.
func (r *RepositoryReconciler) reconcileConflict(ctx context.Context, s *repositoryScope) error {
	var claims v1.RepositoryList
	if err := r.List(ctx, &claims, client.InNamespace(s.repo.Namespace), client.MatchingFields{indexRepositoryPath: repositoryPathKey(s.repo)}); err != nil {
		return fmt.Errorf("listing repositories: %w", err)
	}
	owner := v1.OldestRepository(claims.Items)
	gen := s.repo.Generation
	if owner == nil || owner.Name == s.repo.Name {
		setCondition(&s.status.Conditions, gen, ConditionConflict, metav1.ConditionFalse, ReasonNameUnique, "")
		return nil
	}
	if !isConditionTrue(s.status.Conditions, ConditionConflict) {
		r.Recorder.Eventf(s.repo, owner, corev1.EventTypeWarning, ReasonNameConflict, "Claim",
			"repository %s of Registry %s is already claimed by Repository %s", s.repo.Spec.Name, s.repo.Spec.Registry, owner.Name)
	}
	setCondition(&s.status.Conditions, gen, ConditionConflict, metav1.ConditionTrue, ReasonNameConflict,
		fmt.Sprintf("repository %s of Registry %s is already claimed by the older Repository %s", s.repo.Spec.Name, s.repo.Spec.Registry, owner.Name))
	return nil
}

func (r *RepositoryReconciler) reconcileTagCount(ctx context.Context, s *repositoryScope) error {
	if !s.repo.Status.TagsSplit {
		s.status.TagCount = int32(len(s.status.Tags))
		return nil
	}
	// registryd writes the shards and not the Repository: the counts
	// are the sum of the shards, from the cache.
	tree, err := tagTree(ctx, r.Client, s.repo)
	if err != nil {
		return err
	}
	s.status.TagCount, s.status.Bytes = tree.Totals()
	return nil
}

func (r *RepositoryReconciler) summarize(s *repositoryScope, err error) {
	gen := s.repo.Generation
	switch {
	case err != nil:
		setCondition(&s.status.Conditions, gen, v1.ConditionReady, metav1.ConditionFalse, ReasonReconcileFailed, err.Error())
	case s.reg == nil:
		setCondition(&s.status.Conditions, gen, v1.ConditionReady, metav1.ConditionFalse, ReasonRegistryNotFound,
			"Registry "+s.repo.Spec.Registry+" does not exist")
	case isConditionTrue(s.status.Conditions, ConditionConflict):
		setCondition(&s.status.Conditions, gen, v1.ConditionReady, metav1.ConditionFalse, ReasonNameConflict,
			"another Repository claims this repository path")
	default:
		setCondition(&s.status.Conditions, gen, v1.ConditionReady, metav1.ConditionTrue, ReasonReady, "")
		s.status.ObservedGeneration = gen
	}
}

// reconcileDelete applies deletionPolicy: Delete, then lets the object go.
func (r *RepositoryReconciler) reconcileDelete(ctx context.Context, repo *v1.Repository) error {
	if !controllerutil.ContainsFinalizer(repo, v1.RepositoryFinalizer) {
		return nil
	}
	if repo.Spec.DeletionPolicy == v1.DeletionDelete {
		if err := r.deleteBucketContent(ctx, repo); err != nil {
			r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, ReasonBucketCleanupFailed, "Delete", "%v", err)
			return err
		}
	}
	// Retain: a finalizer left from an older operator; nothing to do.
	base := repo.DeepCopy()
	controllerutil.RemoveFinalizer(repo, v1.RepositoryFinalizer)
	return client.IgnoreNotFound(r.Patch(ctx, repo, client.MergeFrom(base)))
}

// rememberDeleted keeps the last state of a deleted Repository for
// reconcileGone, which only gets its name.
func (r *RepositoryReconciler) rememberDeleted(obj client.Object) {
	if repo, ok := obj.(*v1.Repository); ok && repo.Spec.DeletionPolicy != v1.DeletionDelete {
		r.deleted.Store(client.ObjectKeyFromObject(repo), repo.DeepCopy())
	}
}

// reconcileGone leaves a tombstone by the content of a Retain Repository a
// person deleted, so a journal import does not bring it back. Not when its
// Registry is gone or going too (deleted, or its namespace): then the
// bucket's repositories are meant to come back with the next Registry on
// it. Best effort, with no finalizer: a deletion the operator does not see
// (it was not running) leaves no tombstone.
func (r *RepositoryReconciler) reconcileGone(ctx context.Context, key client.ObjectKey) error {
	last, ok := r.deleted.LoadAndDelete(key)
	if !ok {
		return nil
	}
	repo := last.(*v1.Repository)
	reg := &v1.Registry{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}, reg); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !reg.DeletionTimestamp.IsZero() || !hasOwner(repo, reg) || r.storageOutOfReach(reg) || usesPodIdentity(reg) {
		return nil
	}
	ns := &corev1.Namespace{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: repo.Namespace}, ns); err == nil && !ns.DeletionTimestamp.IsZero() {
		return nil
	}
	env, err := r.credentials.read(ctx, r.APIReader, reg)
	if err != nil {
		return client.IgnoreNotFound(err)
	}
	b, err := r.openStorage(ctx, reg, env)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := tags.NewBucket(b).MarkDeleted(ctx, repo.Spec.Name); err != nil {
		return fmt.Errorf("marking the retained repository %s deleted in the bucket: %w", repo.Spec.Name, err)
	}
	return nil
}

// deleteBucketContent removes the repository's links, referrers and tag
// journal. Blobs are shared across repositories: garbage collection sweeps them.
func (r *RepositoryReconciler) deleteBucketContent(ctx context.Context, repo *v1.Repository) error {
	b, err := r.openRegistryBucket(ctx, repo)
	if err != nil || b == nil {
		return err
	}
	defer b.Close()
	n, err := bucket.DeletePrefixes(ctx, b, storage.RepositoryOwnPrefixes(repo.Spec.Name))
	if err != nil {
		return fmt.Errorf("deleting repository %s from the bucket: %w", repo.Spec.Name, err)
	}
	r.Recorder.Eventf(repo, nil, corev1.EventTypeNormal, "BucketContentDeleted", "Delete",
		"deleted %d objects (links, referrers, tag journal) of repository %s; blobs are left to garbage collection", n, repo.Spec.Name)
	return nil
}

// openRegistryBucket opens the bucket of the Repository's Registry; nil when
// the operator cannot reach it (Registry gone, file:// in a pod), which it
// reports as an Event. The storage Secret may already be gone with a
// deleted namespace: the credentials read before then serve.
func (r *RepositoryReconciler) openRegistryBucket(ctx context.Context, repo *v1.Repository) (*blob.Bucket, error) {
	reg := &v1.Registry{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}, reg); err != nil {
		if apierrors.IsNotFound(err) {
			r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, ReasonRegistryNotFound, "Delete",
				"Registry %s is gone: its bucket cannot be changed", repo.Spec.Registry)
			return nil, nil
		}
		return nil, err
	}
	if r.storageOutOfReach(reg) {
		r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, ReasonBucketCleanupFailed, "Delete",
			"file:// storage lives in registryd's pod, out of the operator's reach")
		return nil, nil
	}
	if usesPodIdentity(reg) {
		r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, ReasonBucketCleanupFailed, "Delete",
			"the Registry has no storage.secretRef: its bucket is reached with registryd's identity only, which the operator does not borrow")
		return nil, nil
	}
	env, err := r.credentials.readForCleanup(ctx, r.APIReader, reg)
	if err != nil {
		return nil, err
	}
	return r.openStorage(ctx, reg, env)
}

// SetupWithManager watches Repositories, their Registry, and their rivals for
// the same path (a deleted owner hands the path to the next one).
func (r *RepositoryReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		// Not on tag pushes: registryd writes status (tags and tagCount
		// together) on every push, and none of it is this reconciler's
		// business, unless the count disagrees with the tags.
		For(&v1.Repository{}, builder.WithPredicates(predicate.And[client.Object](notJustPushed(),
			predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, deletionStarted(), tagCountWrong())))).
		Watches(&v1.Repository{}, handler.Funcs{
			// A Repository registryd has just created gets its status (with
			// SetClaimed's conditions) a moment later: reconciled after
			// that, it needs no write.
			CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				if justPushed(e.Object) {
					q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e.Object)}, claimDelay)
				}
			},
			// Handlers run in no set order: this one enqueues too, after
			// remembering, so reconcileGone finds what it needs.
			DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				r.rememberDeleted(e.Object)
				q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e.Object)})
			},
		}).
		Watches(&v1.Repository{}, handler.EnqueueRequestsFromMapFunc(r.rivals)).
		// A split repository's counts follow its shards, summed once
		// the writes of a moment have landed (not once per tag).
		Watches(&v1.TagShard{}, handler.Funcs{
			CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				q.AddAfter(shardOwner(e.Object), shardCountDelay)
			},
			UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				q.AddAfter(shardOwner(e.ObjectNew), shardCountDelay)
			},
		}).
		// A Registry's existence and spec matter here, not its status.
		Watches(&v1.Registry{}, handler.EnqueueRequestsFromMapFunc(r.repositoriesOf),
			builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, deletionStarted()))).
		Named("repository").
		Complete(r)
}

// shardCountDelay folds the shard writes of a moment into one recount.
const shardCountDelay = 2 * time.Second

func shardOwner(obj client.Object) reconcile.Request {
	sh, _ := obj.(*v1.TagShard)
	if sh == nil {
		return reconcile.Request{}
	}
	return reconcile.Request{NamespacedName: client.ObjectKey{Namespace: sh.Namespace, Name: sh.Spec.Repository}}
}

// rivals are the other Repositories claiming obj's path (obj's own events
// reach it through For's predicates).
func (r *RepositoryReconciler) rivals(ctx context.Context, obj client.Object) []reconcile.Request {
	repo, ok := obj.(*v1.Repository)
	if !ok {
		return nil
	}
	self := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(repo)}
	return slices.DeleteFunc(r.requestsFor(ctx, repo.Namespace, client.MatchingFields{indexRepositoryPath: repositoryPathKey(repo)}),
		func(req reconcile.Request) bool { return req == self })
}

// claimDelay is how long after its creation the operator first reconciles a
// Repository registryd created on push: its status, which registryd writes
// right after the create, is then there.
const claimDelay = 2 * time.Second

// justPushed: a Repository registryd (or the operator's import) has just
// created, whose first status write is still to come.
func justPushed(obj client.Object) bool {
	repo, ok := obj.(*v1.Repository)
	return ok && repo.Labels[v1.LabelRegistry] != "" && len(repo.Status.Conditions) == 0 &&
		repo.Spec.DeletionPolicy != v1.DeletionDelete && repo.DeletionTimestamp.IsZero()
}

// notJustPushed keeps For from reconciling such a Repository at its
// creation (the delayed request above does).
func notJustPushed() predicate.Funcs {
	return predicate.Funcs{CreateFunc: func(e event.CreateEvent) bool { return !justPushed(e.Object) }}
}

func (r *RepositoryReconciler) repositoriesOf(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.requestsFor(ctx, obj.GetNamespace(), client.MatchingFields{indexRepositoryRegistry: obj.GetName()})
}

func (r *RepositoryReconciler) requestsFor(ctx context.Context, ns string, match client.MatchingFields) []reconcile.Request {
	var list v1.RepositoryList
	if err := r.List(ctx, &list, client.InNamespace(ns), match); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, it := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&it)})
	}
	return reqs
}
