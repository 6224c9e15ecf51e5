package storage

// RepositoryOwnPrefixes are the prefixes of every key that belongs to
// repository name and to no other. RepoPrefix alone would also cover nested
// repositories (repos/team/ holds repos/team/app/), so deleting a repository
// deletes these, never RepoPrefix.
func RepositoryOwnPrefixes(name string) []string {
	p := RepoPrefix(name)
	return []string{p + "_layers/", p + "_manifests/", p + "_referrers/", p + "_tags/", TombstoneKey(name)}
}

// TombstoneKey marks a repository whose Repository object a person deleted
// while its content was retained: the operator's journal import leaves it
// out, and a push that creates the repository again removes the mark.
func TombstoneKey(name string) string { return RepoPrefix(name) + "_deleted" }
