package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// registrydRules is what registryd does: reads its Repositories (cache),
// creates one on first push, writes tags into their status (and TagShards),
// reads its own
// Registry (by name: a second Registry in the namespace stays out of reach)
// and updates its status.usage, and records Events. Repositories cannot be told apart by RBAC (their
// names are not known in advance), so two Registries in one namespace share
// them; a namespace per Registry separates them.
func registrydRules(reg *v1.Registry) []*rbacv1ac.PolicyRuleApplyConfiguration {
	return []*rbacv1ac.PolicyRuleApplyConfiguration{
		rbacv1ac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).WithResources("repositories").
			WithVerbs("get", "list", "watch", "create"),
		rbacv1ac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).WithResources("repositories/status").
			WithVerbs("update"),
		// A repository's tags past one object (v1.TagShard).
		rbacv1ac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).WithResources("tagshards").
			WithVerbs("get", "list", "watch", "create", "update"),
		rbacv1ac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).WithResources("registries").
			WithResourceNames(reg.Name).WithVerbs("get", "list", "watch"),
		// status.usage: reservations against spec.quota.
		rbacv1ac.PolicyRule().WithAPIGroups(v1.GroupVersion.Group).WithResources("registries/status").
			WithResourceNames(reg.Name).WithVerbs("update"),
		rbacv1ac.PolicyRule().WithAPIGroups("", "events.k8s.io").WithResources("events").
			WithVerbs("create", "patch"),
	}
}

func (r *RegistryReconciler) reconcileServiceAccount(ctx context.Context, s *registryScope) error {
	sa := corev1ac.ServiceAccount(childName(s.reg), s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg))
	if spec := s.reg.Spec.ServiceAccount; spec != nil && len(spec.Annotations) > 0 {
		sa.WithAnnotations(spec.Annotations)
	}
	return r.apply(ctx, sa, &corev1.ServiceAccount{})
}

func (r *RegistryReconciler) reconcileRBAC(ctx context.Context, s *registryScope) error {
	name, ns := childName(s.reg), s.reg.Namespace
	role := rbacv1ac.Role(name, ns).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithRules(registrydRules(s.reg)...)
	if err := r.apply(ctx, role, &rbacv1.Role{}); err != nil {
		return err
	}
	return r.apply(ctx, rbacv1ac.RoleBinding(name, ns).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("Role").WithName(name)).
		WithSubjects(rbacv1ac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(name).WithNamespace(ns)), &rbacv1.RoleBinding{})
}

// reconcileAuthDelegator binds registryd to system:auth-delegator (TokenReview
// and SubjectAccessReview) only in kubernetes auth mode. The binding is
// cluster-scoped, so labels, not an owner reference, tie it to the Registry,
// and no finalizer: the operator deletes it when it sees the Registry gone,
// now or at its next start.
func (r *RegistryReconciler) reconcileAuthDelegator(ctx context.Context, s *registryScope) error {
	if !wantsAuthDelegator(s.reg) {
		return r.deleteAuthDelegator(ctx, s.reg)
	}
	labels := childLabels(s.reg)
	labels[labelRegistryNamespace] = s.reg.Namespace
	return r.apply(ctx, rbacv1ac.ClusterRoleBinding(authDelegatorName(s.reg)).
		WithLabels(labels).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName("system:auth-delegator")).
		WithSubjects(rbacv1ac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(childName(s.reg)).WithNamespace(s.reg.Namespace)),
		&rbacv1.ClusterRoleBinding{})
}

// deleteAuthDelegator deletes the Registry's binding, if there is one and
// the operator made it for this Registry (its labels say so).
func (r *RegistryReconciler) deleteAuthDelegator(ctx context.Context, reg *v1.Registry) error {
	crb := &rbacv1.ClusterRoleBinding{}
	// The cache first: most Registries never had a binding to delete.
	if err := r.Get(ctx, client.ObjectKey{Name: authDelegatorName(reg)}, crb); err != nil {
		return client.IgnoreNotFound(err)
	}
	l := crb.Labels
	if l[labelManagedBy] != fieldManager || l[labelRegistry] != reg.Name || l[labelRegistryNamespace] != reg.Namespace {
		return nil
	}
	if err := r.Delete(ctx, crb, client.Preconditions{UID: &crb.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting ClusterRoleBinding %s: %w", crb.Name, err)
	}
	return nil
}

// wantsAuthDelegator reads the auth mode as registryd's flags do
// (authMode): a Registry stored before the CRD defaulted the mode runs in
// kubernetes mode, and needs its binding.
func wantsAuthDelegator(reg *v1.Registry) bool { return authMode(reg) == v1.AuthKubernetes }
