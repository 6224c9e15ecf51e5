//go:build !linux

package storage

import "os"

// writeBack is a no-op where sync_file_range(2) does not exist: the
// commit's fsync writes everything.
func writeBack(*os.File, int64, int64) {}

// flushData is fsync where fdatasync(2) is not at hand.
func flushData(f *os.File) { _ = f.Sync() }
