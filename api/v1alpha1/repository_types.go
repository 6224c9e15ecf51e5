package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
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

// RetentionSpec deletes the tags its rules select but do not keep. A tag
// is kept when any rule keeps it, when no rule selects it, when it is
// immutable, when a workload in the cluster uses it or its digest, and
// when it points at a digest another kept tag points at. docs/operator.md,
// "Retention".
type RetentionSpec struct {
	// Rules are OR'ed: a tag any of them keeps is kept.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	Rules []RetentionRule `json:"rules"`

	// DryRun lists in status.retention what a run would delete, and
	// deletes nothing.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
}

// RetentionRule selects tags and keeps those of them that meet any of its
// conditions; a rule with no condition keeps every tag it selects.
type RetentionRule struct {
	// Tags are regular expressions (RE2, matching the whole tag) that
	// select the rule's tags; empty: every tag.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.all(p, ''.matches(p) || !''.matches(p))",message="retention tags: every entry must be a valid regular expression (RE2 syntax)"
	// +listType=atomic
	// +optional
	Tags []string `json:"tags,omitempty"`

	// PushedWithin keeps the selected tags pushed less than this long ago.
	// +optional
	PushedWithin *metav1.Duration `json:"pushedWithin,omitempty"`

	// MostRecent keeps the N most recently pushed selected tags.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MostRecent *int32 `json:"mostRecent,omitempty"`

	// PulledWithin keeps the selected tags pulled less than this long ago
	// (pull times are recorded to registryd's pull-record interval, 1 h by
	// default; a tag never pulled is not kept by it).
	// +optional
	PulledWithin *metav1.Duration `json:"pulledWithin,omitempty"`

	// MostRecentlyPulled keeps the N most recently pulled selected tags;
	// tags never pulled are not kept by it.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MostRecentlyPulled *int32 `json:"mostRecentlyPulled,omitempty"`

	// HighestSemver keeps the N selected tags with the highest semantic
	// versions (1.2.3 or v1.2.3; a pre-release sorts below its release);
	// tags that are no semantic version are not kept by it.
	// +kubebuilder:validation:Minimum=1
	// +optional
	HighestSemver *int32 `json:"highestSemver,omitempty"`
}

// RetentionStatus is the outcome of the last retention run.
type RetentionStatus struct {
	// LastRunTime is when retention last ran on this repository.
	LastRunTime metav1.Time `json:"lastRunTime"`
	// DryRun: the run deleted nothing, and Tags is what it would delete.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
	// Policy names the policy applied: "Repository" or
	// "Registry <name> repositories <glob>".
	// +optional
	Policy string `json:"policy,omitempty"`
	// Tags the run deleted (or, in a dry run, would delete), sorted; at
	// most 1000 names, Count has them all.
	// +listType=atomic
	// +optional
	Tags []string `json:"tags,omitempty"`
	// Count of the tags deleted or to delete.
	// +optional
	Count int32 `json:"count,omitempty"`
	// ObservedGeneration and RegistryGeneration are the generations of
	// the Repository and its Registry the run applied: a spec change of
	// either runs retention again at once.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	RegistryGeneration int64 `json:"registryGeneration,omitempty"`
	// Error is why the run failed, if it did (nothing is deleted then).
	// +optional
	Error string `json:"error,omitempty"`
}

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

	// Retention deletes old tags; it wins over the Registry's.
	// +optional
	Retention *RetentionSpec `json:"retention,omitempty"`

	// Quota bounds what the repository's tags hold: a tag push that would
	// pass it is refused with the spec's DENIED (403), naming the quota.
	// docs/operator.md, "Quotas".
	// +optional
	Quota *RepositoryQuota `json:"quota,omitempty"`

	// +kubebuilder:default=Retain
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// RepositoryQuota bounds a repository. Usage is decided in the same
// status update that writes the tag (a resourceVersion-checked write), so
// replicas racing pushes can never take it past the quota together; once
// the tags are split over TagShards, by a reservation in status.usage.
type RepositoryQuota struct {
	// Bytes bounds status.bytes, the logical size of the tagged content.
	// A push that would take usage past it is refused; one that does not
	// grow usage (a tag moved to smaller content, or to content another
	// tag already holds) is allowed even when usage is over a lowered
	// quota.
	// +optional
	Bytes *resource.Quantity `json:"bytes,omitempty"`

	// Tags bounds the number of tags; a push of a new tag past it is
	// refused, moving an existing tag is not.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Tags *int32 `json:"tags,omitempty"`
}

// TagStatus is one tag of the repository.
type TagStatus struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
	// MediaType and Size of the manifest, so a tag is a whole descriptor.
	MediaType string      `json:"mediaType,omitempty"`
	Size      int64       `json:"size,omitempty"`
	PushedAt  metav1.Time `json:"pushedAt"`
	// ContentSize is the bytes the manifest holds: its own, its blobs'
	// (config and layers, sizes checked against the stored blobs at the
	// push), and for an index those of each child manifest. 0 for tags
	// written before registryd recorded it, or imported from a journal.
	// +optional
	ContentSize int64 `json:"contentSize,omitempty"`
	// PulledAt is when the tag was last pulled (a GET or HEAD of the
	// manifest by tag), to registryd's pull-record interval (1 h by
	// default): it moves at most once an interval. Unset: no pull
	// recorded since the tag was pushed (moving a tag clears it).
	// +optional
	PulledAt *metav1.Time `json:"pulledAt,omitempty"`
}

// RepositoryStatus holds the repository's tags: the tag store of the kubernetes mode.
type RepositoryStatus struct {
	// Tags sorted by name. An atomic list: the API server's managedFields
	// then hold one entry for it, not every tag's fields (as a map list
	// they were 40 % of the object, and computing them doubled the cost of
	// each status update). Only registryd and the operator write it, with
	// conditional updates, never apply patches.
	// +listType=atomic
	// +optional
	Tags []TagStatus `json:"tags,omitempty"`
	// TagsSplit: the repository has more tags than one object holds
	// (MaxTagsPerObject), and they are in TagShards; Tags is frozen as it
	// was when they split. TagCount and Bytes then sum the shards (the
	// operator keeps them).
	// +optional
	TagsSplit bool `json:"tagsSplit,omitempty"`
	// +optional
	TagCount int32 `json:"tagCount,omitempty"`
	// Bytes is the logical size of the tagged content: the contentSize of
	// each digest a tag points at, once per digest (a layer two manifests
	// share counts twice; untagged manifests count nothing). spec.quota.bytes
	// bounds it.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// Usage is what a repository whose tags are split holds, kept while
	// it has a quota (spec.quota) or its Registry a tag limit
	// (spec.limits.maxTagsPerRepository): its shards' writes are not
	// conditional on each other, so registryd reserves room here before
	// a push that may grow the repository and settles after, as on a
	// Registry's status.usage, and the operator recounts it from the
	// shards. docs/operator.md, "Quotas".
	// +optional
	Usage *QuotaUsage `json:"usage,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Retention is the outcome of the last retention run.
	// +optional
	Retention *RetentionStatus `json:"retention,omitempty"`
}

// Repository is one OCI repository of a Registry; its status holds the tags.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=repo
// +kubebuilder:selectablefield:JSONPath=`.spec.registry`
// +kubebuilder:printcolumn:name="Registry",type=string,JSONPath=`.spec.registry`
// +kubebuilder:printcolumn:name="Name",type=string,JSONPath=`.spec.name`
// +kubebuilder:printcolumn:name="Tags",type=integer,JSONPath=`.status.tagCount`
// +kubebuilder:printcolumn:name="Bytes",type=integer,JSONPath=`.status.bytes`
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
