package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DeletionPolicy says what happens in the bucket when a Repository is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type DeletionPolicy string

const (
	// DeletionRetain keeps the repository's links and tag journal.
	DeletionRetain DeletionPolicy = "Retain"
	// DeletionDelete removes them; blobs are left for garbage collection.
	DeletionDelete DeletionPolicy = "Delete"
)

// RepositorySpec names one OCI repository of a Registry.
type RepositorySpec struct {
	// Registry is the name of the Registry in the same namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.registry is immutable"
	Registry string `json:"registry"`

	// Name is the OCI repository path, e.g. team/app.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*)*$')",message="spec.name must be a valid OCI repository path: lower-case alphanumeric components separated by '/', with '.', '_', '__' or '-' inside a component"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.name is immutable"
	Name string `json:"name"`

	// ImmutableTags are regular expressions (RE2, anchored at both ends:
	// "v[0-9]+[.].*" matches v1.2 but not dev-v1.2) naming tags that, once
	// they exist, can be neither moved to another manifest, nor deleted,
	// nor removed with the manifest they point at. They add to the
	// Registry's spec.immutableTags. Pushing a tag again with the same
	// manifest is allowed.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.all(p, ''.matches(p) || !''.matches(p))",message="spec.immutableTags: every entry must be a valid regular expression (RE2 syntax)"
	// +listType=atomic
	// +optional
	ImmutableTags []string `json:"immutableTags,omitempty"`

	// +kubebuilder:default=Retain
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// TagStatus is one tag of the repository.
type TagStatus struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
	// MediaType and Size of the manifest, so a tag is a whole descriptor.
	MediaType string      `json:"mediaType,omitempty"`
	Size      int64       `json:"size,omitempty"`
	PushedAt  metav1.Time `json:"pushedAt"`
}

// RepositoryStatus holds the repository's tags: the tag store of the kubernetes mode.
type RepositoryStatus struct {
	// Tags sorted by name.
	// +listType=map
	// +listMapKey=name
	// +optional
	Tags []TagStatus `json:"tags,omitempty"`
	// +optional
	TagCount int32 `json:"tagCount,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Repository is one OCI repository of a Registry; its status holds the tags.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=repo
// +kubebuilder:selectablefield:JSONPath=`.spec.registry`
// +kubebuilder:printcolumn:name="Registry",type=string,JSONPath=`.spec.registry`
// +kubebuilder:printcolumn:name="Name",type=string,JSONPath=`.spec.name`
// +kubebuilder:printcolumn:name="Tags",type=integer,JSONPath=`.status.tagCount`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Repository struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RepositorySpec   `json:"spec"`
	Status RepositoryStatus `json:"status,omitempty"`
}

// RepositoryList is a list of Repository.
// +kubebuilder:object:root=true
type RepositoryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Repository `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Repository{}, &RepositoryList{})
}
