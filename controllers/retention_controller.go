package controllers

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/retention"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// Retention runs in the operator, per Repository: on a spec change of the
// Repository or its Registry, and then every RetentionInterval. It decides
// on a live read of the Repository and of every workload in the cluster
// (pods and the pod templates of Deployments and their old ReplicaSets,
// ReplicationControllers, StatefulSets, DaemonSets,
// Jobs and CronJobs, listed past the cache: the operator caches only what
// it made), and removes the tags in one status update conditional on the
// resourceVersion it decided on, so a tag pushed or moved meanwhile is
// never deleted on a stale plan.

// defaultRetentionInterval spaces retention runs of one repository.
const defaultRetentionInterval = time.Hour

// retentionListLimit bounds the tag names status.retention holds: 250
// names of up to 128 characters keep the Repository under 64 KiB.
const retentionListLimit = 250

// Event reasons of retention.
const (
	ReasonRetentionDeleted = "RetentionDeleted"
	ReasonRetentionDryRun  = "RetentionDryRun"
	ReasonRetentionFailed  = "RetentionFailed"
)

// RetentionReconciler applies retention policies to Repositories.
type RetentionReconciler struct {
	client.Client
	// APIReader lists workloads (never cached) and reads Repositories live.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Options
}

// +kubebuilder:rbac:groups="",resources=pods;replicationcontrollers,verbs=list
// +kubebuilder:rbac:groups=apps,resources=deployments;replicasets;statefulsets;daemonsets,verbs=list
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=list

func (r *RetentionReconciler) interval() time.Duration {
	if r.RetentionInterval > 0 {
		return r.RetentionInterval
	}
	return defaultRetentionInterval
}

func (r *RetentionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	// The cache first: most Repositories have no policy, and those cost
	// the API server nothing.
	cached, reg := &v1.Repository{}, &v1.Registry{}
	if err := r.Get(ctx, req.NamespacedName, cached); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if err := r.Get(ctx, client.ObjectKey{Namespace: cached.Namespace, Name: cached.Spec.Registry}, reg); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if p, _ := effectiveRetention(reg, cached); p == nil && cached.Status.Retention == nil {
		return ctrl.Result{}, nil
	}
	// A run decides on live objects: the cache may lack the latest tags.
	// A push between the read and the update makes the update conflict:
	// decide again on what is there now, a few times, then a second
	// later (not the workqueue's growing backoff: a busy repository
	// would otherwise wait longer and longer).
	for range retentionAttempts {
		res, err := r.reconcileLive(ctx, req)
		if !apierrors.IsConflict(err) {
			return res, err
		}
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

// retentionAttempts bounds the runs one reconcile tries while pushes keep
// moving the Repository's resourceVersion.
const retentionAttempts = 5

// reconcileLive runs retention on the live Repository when it is due.
func (r *RetentionReconciler) reconcileLive(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	repo, reg := &v1.Repository{}, &v1.Registry{}
	if err := r.APIReader.Get(ctx, req.NamespacedName, repo); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !repo.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: repo.Namespace, Name: repo.Spec.Registry}, reg); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	policy, name := effectiveRetention(reg, repo)
	if policy == nil {
		if repo.Status.Retention == nil {
			return ctrl.Result{}, nil
		}
		base := repo.DeepCopy()
		repo.Status.Retention = nil
		return ctrl.Result{}, client.IgnoreNotFound(r.Status().Patch(ctx, repo, client.MergeFrom(base)))
	}
	// Not before the interval since the last run; a change of the
	// Repository's or the Registry's spec (a new policy, dryRun turned
	// off) runs at once.
	if last := repo.Status.Retention; last != nil && last.Error == "" &&
		last.ObservedGeneration == repo.Generation && last.RegistryGeneration == reg.Generation {
		if wait := last.LastRunTime.Add(r.interval()).Sub(time.Now()); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	if err := r.run(ctx, repo, reg, policy, name); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: r.interval()}, nil
}

// run decides and, unless dry, deletes, in one status update.
func (r *RetentionReconciler) run(ctx context.Context, repo *v1.Repository, reg *v1.Registry, spec *v1.RetentionSpec, name string) error {
	now := time.Now()
	base := repo.DeepCopy()
	result := &v1.RetentionStatus{LastRunTime: metav1.NewTime(now), DryRun: spec.DryRun, Policy: name,
		ObservedGeneration: repo.Generation, RegistryGeneration: reg.Generation}
	tree, err := tagTree(ctx, r.APIReader, repo)
	if err != nil {
		return err
	}
	plan, err := r.plan(ctx, repo, reg, spec, tree.All(), now)
	if err != nil {
		result.Error = err.Error()
		repo.Status.Retention = result
		r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, ReasonRetentionFailed, "Retention", "%v", err)
		return errors.Join(err, client.IgnoreNotFound(r.Status().Patch(ctx, repo, client.MergeFrom(base))))
	}
	result.Count = int32(len(plan.Delete))
	result.Tags = plan.Delete[:min(len(plan.Delete), retentionListLimit)]
	repo.Status.Retention = result
	switch {
	case spec.DryRun:
	case repo.Status.TagsSplit:
		// Each shard's deletions in one update conditional on the
		// shard as the plan read it; a push since conflicts, and the
		// next run decides again on what is left.
		if err := r.deleteFromShards(ctx, repo, tree, plan.Delete); err != nil {
			return client.IgnoreNotFound(err)
		}
	default:
		for _, t := range plan.Delete {
			repo.Status.RemoveTag(t)
		}
		repo.Status.Recount() // bytes freed count at once against a quota
	}
	// Update, not patch: the resourceVersion the plan was made on must
	// still be current, or a push since could lose its tag
	// (TestRetentionRacesPushes loses dozens with a merge patch). A
	// split repository's tags are not in it: its run is recorded with a
	// patch, after the shards' conditional updates.
	if repo.Status.TagsSplit {
		if err := r.Status().Patch(ctx, repo, client.MergeFrom(base)); err != nil {
			return client.IgnoreNotFound(err)
		}
	} else if err := r.Status().Update(ctx, repo); err != nil {
		return client.IgnoreNotFound(err)
	}
	switch {
	case spec.DryRun:
		r.Recorder.Eventf(repo, nil, corev1.EventTypeNormal, ReasonRetentionDryRun, "Retention",
			"dry run (%s): would delete %d tags", name, len(plan.Delete))
	case len(plan.Delete) > 0:
		r.Recorder.Eventf(repo, nil, corev1.EventTypeNormal, ReasonRetentionDeleted, "Retention",
			"deleted %d tags (%s)", len(plan.Delete), name)
		r.dropFromJournal(ctx, reg, repo, plan.Delete)
	}
	return nil
}

// plan computes what the policy deletes now.
func (r *RetentionReconciler) plan(ctx context.Context, repo *v1.Repository, reg *v1.Registry, spec *v1.RetentionSpec, all []v1.TagStatus, now time.Time) (retention.Plan, error) {
	inUse, err := r.imagesInUse(ctx)
	if err != nil {
		return retention.Plan{}, err
	}
	prot := inUse.Protection(repo.Spec.Name)
	var patterns tags.Patterns
	immutable := append(patterns.Rules("Repository "+repo.Name, repo.Spec.ImmutableTags),
		patterns.Rules("Registry "+reg.Name, reg.Spec.ImmutableTags)...)
	prot.Immutable = func(tag string) bool { _, ok := immutable.Match(tag); return ok }
	list := make([]retention.Tag, 0, len(all))
	for _, t := range all {
		tag := retention.Tag{Name: t.Name, Digest: t.Digest, PushedAt: t.PushedAt.Time}
		if t.PulledAt != nil {
			tag.PulledAt = t.PulledAt.Time
		}
		list = append(list, tag)
	}
	return retention.Decide(list, policyOf(spec), prot, now)
}

// deleteFromShards removes tags from the leaves of tree that hold them:
// each leaf in one update conditional on the resourceVersion the plan
// read, or, for a shard not created yet, a create from its frozen
// parent's tags (AlreadyExists: someone wrote it since, a conflict).
func (r *RetentionReconciler) deleteFromShards(ctx context.Context, repo *v1.Repository, tree v1.TagTree, names []string) error {
	byLeaf := map[string][]string{}
	leaves := map[string]v1.TagLeaf{}
	for _, name := range names {
		leaf := tree.Home(v1.HashTag(name))
		byLeaf[leaf.Prefix] = append(byLeaf[leaf.Prefix], name)
		leaves[leaf.Prefix] = leaf
	}
	for prefix, gone := range byLeaf {
		leaf := leaves[prefix]
		st := v1.RepositoryStatus{Tags: slices.Clone(leaf.Tags)}
		for _, name := range gone {
			st.RemoveTag(name)
		}
		if leaf.Virtual {
			sh := v1.NewTagShard(repo, prefix, st.Tags, false)
			if err := r.Create(ctx, sh); apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(v1.GroupVersion.WithResource("tagshards").GroupResource(), sh.Name, err)
			} else if err != nil {
				return err
			}
			continue
		}
		sh := leaf.Shard.DeepCopy()
		sh.Tags = st.Tags
		if err := r.Update(ctx, sh); err != nil {
			return err
		}
	}
	return nil
}

func policyOf(spec *v1.RetentionSpec) retention.Policy {
	var p retention.Policy
	for _, r := range spec.Rules {
		rule := retention.Rule{Tags: r.Tags}
		if r.PushedWithin != nil {
			rule.PushedWithin = r.PushedWithin.Duration
		}
		if r.MostRecent != nil {
			rule.MostRecent = int(*r.MostRecent)
		}
		if r.HighestSemver != nil {
			rule.HighestSemver = int(*r.HighestSemver)
		}
		if r.PulledWithin != nil {
			rule.PulledWithin = r.PulledWithin.Duration
		}
		if r.MostRecentlyPulled != nil {
			rule.MostRecentlyPulled = int(*r.MostRecentlyPulled)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p
}

// imagesInUse lists every workload of the cluster, live.
func (r *RetentionReconciler) imagesInUse(ctx context.Context) (*retention.InUse, error) {
	u := &retention.InUse{}
	var pods corev1.PodList
	if err := r.APIReader.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods for in-use protection: %w", err)
	}
	for i := range pods.Items {
		u.AddPod(&pods.Items[i])
	}
	var deps appsv1.DeploymentList
	var rss appsv1.ReplicaSetList
	var rcs corev1.ReplicationControllerList
	var sts appsv1.StatefulSetList
	var dss appsv1.DaemonSetList
	var jobs batchv1.JobList
	var crons batchv1.CronJobList
	for _, list := range []client.ObjectList{&deps, &rss, &rcs, &sts, &dss, &jobs, &crons} {
		if err := r.APIReader.List(ctx, list); err != nil {
			return nil, fmt.Errorf("listing workloads for in-use protection: %w", err)
		}
	}
	// Templates count whatever their replicas: scaled to zero, suspended
	// or finished, they may run their image again.
	for i := range deps.Items {
		u.AddPodSpec(&deps.Items[i].Spec.Template.Spec)
	}
	// A Deployment's old ReplicaSets are its rollback history: `kubectl
	// rollout undo` runs their images again.
	for i := range rss.Items {
		u.AddPodSpec(&rss.Items[i].Spec.Template.Spec)
	}
	for i := range rcs.Items {
		if t := rcs.Items[i].Spec.Template; t != nil {
			u.AddPodSpec(&t.Spec)
		}
	}
	for i := range sts.Items {
		u.AddPodSpec(&sts.Items[i].Spec.Template.Spec)
	}
	for i := range dss.Items {
		u.AddPodSpec(&dss.Items[i].Spec.Template.Spec)
	}
	for i := range jobs.Items {
		u.AddPodSpec(&jobs.Items[i].Spec.Template.Spec)
	}
	for i := range crons.Items {
		u.AddPodSpec(&crons.Items[i].Spec.JobTemplate.Spec.Template.Spec)
	}
	return u, nil
}

// dropFromJournal removes deleted tags from the bucket's tag journal where
// the operator reaches the bucket, so an import after a lost cluster does
// not bring them back; best effort (status is what registryd serves).
func (r *RetentionReconciler) dropFromJournal(ctx context.Context, reg *v1.Registry, repo *v1.Repository, deleted []string) {
	if r.storageOutOfReach(reg) || usesPodIdentity(reg) {
		return
	}
	env, err := (&credentialSnapshots{}).read(ctx, r.APIReader, reg)
	if err != nil {
		return
	}
	b, err := r.openStorage(ctx, reg, env)
	if err != nil {
		return
	}
	defer b.Close()
	journal := tags.NewBucket(b)
	for _, t := range deleted {
		if err := journal.Delete(ctx, repo.Spec.Name, t); err != nil && !errors.Is(err, tags.ErrNotFound) {
			ctrl.LoggerFrom(ctx).Info("retention: removing a deleted tag from the journal", "tag", t, "error", err)
			return
		}
	}
}

// effectiveRetention is the Repository's own policy, else the first of
// the Registry's whose glob matches its path; nil if none. name says which.
func effectiveRetention(reg *v1.Registry, repo *v1.Repository) (*v1.RetentionSpec, string) {
	if repo.Spec.Retention != nil {
		return repo.Spec.Retention, "Repository"
	}
	for i := range reg.Spec.Retention {
		e := &reg.Spec.Retention[i]
		if globMatch(e.Repositories, repo.Spec.Name) {
			return &e.RetentionSpec, fmt.Sprintf("Registry %s repositories %s", reg.Name, e.Repositories)
		}
	}
	return nil, ""
}

// globMatch matches a repository path against a glob: * within a path
// segment, ** across segments, ? one character of a segment.
func globMatch(glob, path string) bool {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; {
		case c == '*' && i+1 < len(glob) && glob[i+1] == '*':
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	return err == nil && re.MatchString(path)
}

// SetupWithManager runs retention on Repository spec changes and Registry
// spec changes (each of its Repositories), then on its own schedule.
func (r *RetentionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	repos := &RepositoryReconciler{Client: mgr.GetClient()}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Repository{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1.Registry{}, handler.EnqueueRequestsFromMapFunc(repos.repositoriesOf),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Named("retention").
		Complete(r)
}
