package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeBack starts writing the file's pages in [off, off+n) to the disk
// and returns without waiting for them (sync_file_range(2) with
// SYNC_FILE_RANGE_WRITE; it may block while the device's queue is full,
// which paces the writer to the disk). Best effort: the fsync that makes
// the content durable still follows.
func writeBack(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// flushData is fdatasync(2): the file's data, and the device's write
// cache, on stable storage. Through Control, so that a Close racing it
// waits rather than letting it sync a reused descriptor.
func flushData(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.Fdatasync(int(fd))
	})
}
