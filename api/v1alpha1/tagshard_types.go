package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// MaxTagsPerObject is how many tags registryd keeps in one object (a
// Repository's status, a TagShard) before it splits them in two. Hashing
// spreads concurrent pushes over the shards, so a tag write is about one
// update of one shard, whose cost on the API server grows with the
// shard's size: measured (BenchmarkPushTags, 3 replicas, 48 writers), 78
// tags/s at 128 tags an object, 161 at 32, 166 at 16 (docs/operator.md,
// "Tags past one object", has the later figures). At 32 an object is
// at most 12 KiB (388 bytes a tag at worst: a 128-character name, a
// content size, push and pull times), far under the 64 KiB the API
// server's scale guidance is written for.
const MaxTagsPerObject = 32

// LabelRepositoryUID on a TagShard names the UID of the Repository whose
// tags it holds, so its shards are listed with one selector.
const LabelRepositoryUID = "stevedore.dev/repository-uid"

// TagShardSpec says whose tags a TagShard holds, and which.
type TagShardSpec struct {
	// Registry is the Registry of the Repository.
	Registry string `json:"registry"`
	// Repository is the name of the Repository object.
	Repository string `json:"repository"`
	// RepositoryUID is the UID of that Repository: a Repository deleted
	// and created again starts with no shards.
	RepositoryUID types.UID `json:"repositoryUID"`
	// Prefix is the leading bits of the SHA-256 of the tags' names that
	// this shard holds, as '0' and '1' characters.
	// +kubebuilder:validation:Pattern=`^[01]{1,256}$`
	Prefix string `json:"prefix"`
}

// TagShard holds part of the tags of a Repository whose tags one object
// cannot hold (more than MaxTagsPerObject). A Repository whose
// status.tagsSplit is true keeps its tags in two TagShards, prefixes "0"
// and "1", by the first bit of the SHA-256 of a tag's name; a TagShard
// with split true in two more, prefix+"0" and prefix+"1", and so on. A
// split object is never written again, except to drop its tags once both
// of its children exist; a child that does not exist yet holds its
// parent's tags of its prefix. registryd writes TagShards; the operator
// sums them into the Repository's status.tagCount and status.bytes. See
// docs/operator.md, "Tags past one object".
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=tagshard
// +kubebuilder:selectablefield:JSONPath=`.spec.registry`
// +kubebuilder:printcolumn:name="Repository",type=string,JSONPath=`.spec.repository`
// +kubebuilder:printcolumn:name="Prefix",type=string,JSONPath=`.spec.prefix`
// +kubebuilder:printcolumn:name="Split",type=boolean,JSONPath=`.split`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TagShard struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec TagShardSpec `json:"spec"`
	// Tags sorted by name. Not status: a shard is created with its tags.
	// +listType=atomic
	// +optional
	Tags []TagStatus `json:"tags,omitempty"`
	// Split: this shard's tags are in its two children now.
	// +optional
	Split bool `json:"split,omitempty"`
}

// TagShardList is a list of TagShard.
// +kubebuilder:object:root=true
type TagShardList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TagShard `json:"items"`
}

func init() {
	SchemeBuilder.Register(&TagShard{}, &TagShardList{})
}
