package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of a Repository besides Ready, and the reasons the
// operator gives them when all is well (controllers); registryd writes the
// same with the first status of a Repository it creates (SetClaimed).
const (
	ConditionRegistryFound = "RegistryFound"
	ConditionConflict      = "Conflict"

	ReasonRegistryFound = "RegistryFound"
	ReasonNameUnique    = "NameUnique"
	ReasonReady         = "Ready"
)

// SetClaimed records what the operator concludes about a Repository of an
// existing Registry that no older Repository contests: RegistryFound,
// Conflict False, Ready, in the order and form the operator writes them, at
// generation. registryd sets it with the first status of a Repository it
// created on push (its Registry exists; it found no other claim), so the
// operator's reconcile of the new object finds its status as it would
// write it and writes nothing: one write less per new repository. The
// operator still decides: a contested claim it finds turns Conflict True.
func (s *RepositoryStatus) SetClaimed(generation int64) {
	for _, c := range []metav1.Condition{
		{Type: ConditionRegistryFound, Status: metav1.ConditionTrue, Reason: ReasonRegistryFound},
		{Type: ConditionConflict, Status: metav1.ConditionFalse, Reason: ReasonNameUnique},
		{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonReady},
	} {
		c.ObservedGeneration = generation
		meta.SetStatusCondition(&s.Conditions, c)
	}
	s.ObservedGeneration = generation
}

// RepositoryObjectName is the name of the Repository object that registryd
// creates for repository path of Registry registry. It is deterministic, so
// two replicas creating it at once race to the same name and one gets
// AlreadyExists; readable (registry and path with '/' as '.'); and
// collision-safe: paths that map to the same readable part ("a_b", "a-b")
// differ in the hash suffix.
func RepositoryObjectName(registry, path string) string {
	sum := sha256.Sum256([]byte(registry + "\x00" + path))
	suffix := "-" + hex.EncodeToString(sum[:4])
	readable := registry + "." + strings.NewReplacer("/", ".", "_", "-").Replace(path)
	const maxName = 253
	if len(readable) > maxName-len(suffix) {
		readable = readable[:maxName-len(suffix)]
	}
	// A DNS subdomain's labels end in an alphanumeric character.
	return strings.TrimRight(readable, ".-") + suffix
}

// OldestRepository is the Repository that owns a (registry, path) claimed by
// several: the oldest live one, ties broken by name, so the operator and
// every registryd replica agree.
func OldestRepository(items []Repository) *Repository {
	var oldest *Repository
	for i := range items {
		it := &items[i]
		if !it.DeletionTimestamp.IsZero() {
			continue
		}
		if oldest == nil || it.CreationTimestamp.Before(&oldest.CreationTimestamp) ||
			(it.CreationTimestamp.Equal(&oldest.CreationTimestamp) && it.Name < oldest.Name) {
			oldest = it
		}
	}
	return oldest
}

func compareTagName(t TagStatus, name string) int { return strings.Compare(t.Name, name) }

// FindTag returns the tag called name, if the repository has it.
func (s *RepositoryStatus) FindTag(name string) (TagStatus, bool) {
	i, ok := slices.BinarySearchFunc(s.Tags, name, compareTagName)
	if !ok {
		return TagStatus{}, false
	}
	return s.Tags[i], true
}

// TagsAfter returns the tags named after last, in order: a binary search
// into the sorted Tags, so a page costs its own length. The slice is
// shared with the status.
func (s *RepositoryStatus) TagsAfter(last string) []TagStatus {
	i, ok := slices.BinarySearchFunc(s.Tags, last, compareTagName)
	if ok {
		i++
	}
	return s.Tags[i:]
}

// SetTag inserts or replaces a tag, keeping Tags sorted by name, and
// counts them (Bytes waits for Recount).
func (s *RepositoryStatus) SetTag(t TagStatus) {
	i, ok := slices.BinarySearchFunc(s.Tags, t.Name, compareTagName)
	if ok {
		s.Tags[i] = t
	} else {
		s.Tags = slices.Insert(s.Tags, i, t)
	}
	s.TagCount = int32(len(s.Tags))
}

// RemoveTag deletes a tag and reports whether it was there.
func (s *RepositoryStatus) RemoveTag(name string) bool {
	i, ok := slices.BinarySearchFunc(s.Tags, name, compareTagName)
	if ok {
		s.Tags = slices.Delete(s.Tags, i, i+1)
		s.TagCount = int32(len(s.Tags))
	}
	return ok
}

// Recount sets TagCount and Bytes from Tags. Every writer of Tags calls
// it once before its status update (not per tag: Bytes is a pass over
// all tags).
func (s *RepositoryStatus) Recount() {
	s.TagCount = int32(len(s.Tags))
	s.Bytes = s.CountBytes()
}

// CountBytes is the logical size of Tags: each digest's contentSize once,
// however many tags point at it.
func (s *RepositoryStatus) CountBytes() int64 {
	seen := make(map[string]bool, len(s.Tags))
	var n int64
	for _, t := range s.Tags {
		if !seen[t.Digest] {
			seen[t.Digest] = true
			n += t.ContentSize
		}
	}
	return n
}
