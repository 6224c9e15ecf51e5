package controllers

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// fieldManager is the one field manager of every server-side apply.
const fieldManager = "stevedore-operator"

const (
	// repositoryCleanupFinalizer holds a Registry while some of its
	// Repositories must delete their bucket content first.
	repositoryCleanupFinalizer = "stevedore.dev/repository-cleanup"
	// legacyClusterResourcesFinalizer is removed wherever found: the
	// auth-delegator binding is collected without a finalizer now.
	legacyClusterResourcesFinalizer = "stevedore.dev/cluster-resources"

	labelName              = "app.kubernetes.io/name"
	labelInstance          = "app.kubernetes.io/instance"
	labelManagedBy         = "app.kubernetes.io/managed-by"
	labelRegistry          = v1.LabelRegistry
	labelRegistryNamespace = "stevedore.dev/registry-namespace"

	// Ports inside the pod; the Service maps spec.service.port onto httpPort.
	httpPort  = 5000
	debugPort = 5001

	httpSecretKey = "secret"
)

// childName names every namespaced child of a Registry.
func childName(reg *v1.Registry) string { return reg.Name + "-registry" }

func httpSecretName(reg *v1.Registry) string { return childName(reg) + "-http-secret" }

// authDelegatorName is cluster-scoped, so it carries the namespace.
func authDelegatorName(reg *v1.Registry) string {
	return "stevedore:" + reg.Namespace + ":" + reg.Name + ":auth-delegator"
}

// selectorLabels select registryd's pods; they never change after creation.
func selectorLabels(reg *v1.Registry) map[string]string {
	return map[string]string{labelName: "registryd", labelInstance: reg.Name}
}

func childLabels(reg *v1.Registry) map[string]string {
	l := selectorLabels(reg)
	l[labelManagedBy] = fieldManager
	l[labelRegistry] = reg.Name
	return l
}

// ownerRef is the controller reference (as SetControllerReference makes) in
// the apply-configuration form server-side apply needs.
func ownerRef(reg *v1.Registry) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(v1.GroupVersion.String()).
		WithKind("Registry").
		WithName(reg.Name).
		WithUID(reg.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

func replicas(reg *v1.Registry) int32 { return ptr.Deref(reg.Spec.Replicas, 1) }

func servicePort(reg *v1.Registry) int32 {
	if reg.Spec.Service.Port == 0 {
		return httpPort
	}
	return reg.Spec.Service.Port
}

// isOwnedBy tells whether obj is controlled by reg, so the operator never
// deletes an object it did not create.
func isOwnedBy(obj metav1.Object, reg *v1.Registry) bool {
	ref := metav1.GetControllerOf(obj)
	return ref != nil && ref.UID == reg.UID
}
