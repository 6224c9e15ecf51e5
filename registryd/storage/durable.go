package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gocloud.dev/blob"
)

// Durable writes on a local directory (fileblob), so that a 201 survives a
// power cut as it does with distribution: fileblob writes a temp file and
// renames it into place without any fsync. A durable write fsyncs the
// file's data before fileblob renames it (StreamDurable does it when the content
// ends, through the *os.File that fileblob's BeforeWrite exposes), then
// the directory that received the name (Syncer.SyncDir). On every other
// driver both are no-ops: object stores acknowledge durable writes.

// SyncDir fsyncs the directory holding key on a local bucket, making a
// rename or link into it durable. It learns the bucket's directory from
// an open reader of key the first time. Elsewhere it does nothing.
func (r *SmallReader) SyncDir(ctx context.Context, key string) error {
	var dirInfo os.FileInfo
	if !r.bucket.As(&dirInfo) || !plainKey(key) {
		return nil
	}
	root := r.learnedRoot()
	if root == "" {
		rd, err := r.bucket.NewReader(ctx, key, nil)
		if err != nil {
			return classify(err, key)
		}
		r.learn(rd, key)
		_ = rd.Close()
		if root = r.learnedRoot(); root == "" {
			return nil
		}
	}
	return syncPath(filepath.Dir(root + filepath.FromSlash(key)))
}

// SyncFile fsyncs the file of key and its directory on a local bucket: for
// content that became its key without passing through Stream (a hard link
// of an upload part, whose data was not synced when it was written).
func (r *SmallReader) SyncFile(ctx context.Context, key string) error {
	if err := r.SyncDir(ctx, key); err != nil {
		return err
	}
	if root := r.learnedRoot(); root != "" {
		return syncPath(root + filepath.FromSlash(key))
	}
	return nil
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}

// fileOptions is a copy of opts that hands fileblob's temp file to file,
// so stream can send its pages to the disk as they arrive and, for a
// durable write, fsync it before the driver renames it.
func fileOptions(opts *blob.WriterOptions, file **os.File) *blob.WriterOptions {
	o := *opts
	before := o.BeforeWrite
	o.BeforeWrite = func(asFunc func(any) bool) error {
		var f *os.File
		if asFunc(&f) {
			*file = f
		}
		if before != nil {
			return before(asFunc)
		}
		return nil
	}
	return &o
}

// RemoveEmptyDir removes the directory of prefix (ending in "/") on a local
// bucket whose directory is known, if it is empty; fileblob deletes files
// and leaves their directories. Best effort: a directory that is not empty
// (another write arrived) stays.
func (r *SmallReader) RemoveEmptyDir(prefix string) {
	root := r.learnedRoot()
	if root == "" || !plainKey(strings.TrimSuffix(prefix, "/")) {
		return
	}
	_ = os.Remove(root + filepath.FromSlash(strings.TrimSuffix(prefix, "/")))
}
