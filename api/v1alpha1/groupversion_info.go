// Package v1alpha1 holds the Registry and Repository API types of group stevedore.dev.
// +kubebuilder:object:generate=true
// +groupName=stevedore.dev
package v1alpha1

import (
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

// RepositoryFinalizer lets the operator apply a Repository's deletionPolicy
// before the object goes. Whoever creates a Repository (registryd on push,
// the operator's journal import) sets it at creation, so even a deletion
// that follows at once goes through the policy.
const RepositoryFinalizer = "stevedore.dev/deletion-policy"
