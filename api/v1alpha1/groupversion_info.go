// Package v1alpha1 holds the Registry and Repository API types of group stevedore.dev.
// +kubebuilder:object:generate=true
// +groupName=stevedore.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "stevedore.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// LabelRegistry labels objects made for a Registry (Repositories registryd or
// the operator create, the operator's cluster-scoped children) with its name.
const LabelRegistry = "stevedore.dev/registry"

// RepositoryFinalizer lets the operator apply deletionPolicy: Delete before
// the object goes. Only Repositories with that policy carry it (the operator
// adds it, and removes it from any other): a Retain Repository needs nobody
// at its deletion, so a namespace deleted without an operator is not held up.
const RepositoryFinalizer = "stevedore.dev/deletion-policy"

// RegistryOwnerReference makes a Repository a dependent of its Registry, so
// deleting the Registry deletes its Repositories (the garbage collector
// does). Not a controller reference, and it does not block the owner's
// deletion (that would need update on registries/finalizers).
func RegistryOwnerReference(reg *Registry) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: GroupVersion.String(), Kind: "Registry", Name: reg.Name, UID: reg.UID,
	}
}
