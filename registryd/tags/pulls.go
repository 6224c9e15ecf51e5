package tags

// PullRecorder is an optional capability of a Store that remembers when
// tags were last pulled, for retention rules on pull times. RecordPull is
// called on the pull path and must not block or do I/O: the store keeps
// pulls in memory and writes them coarsely, in batches.
type PullRecorder interface {
	RecordPull(repo, tag string)
}
