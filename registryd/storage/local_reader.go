package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"gocloud.dev/blob"
)

// SmallReader reads small objects whole. On a local directory (fileblob) it
// reads the object's file directly once it has learned where the bucket
// lives: fileblob's reader stats the file, probes for an attributes sidecar,
// opens the file for the poller and records a trace span for each read,
// which made the tag read the largest cost of a manifest GET by tag in
// standalone mode. Anywhere else, and for any key fileblob would escape, it
// reads through the bucket. Safe for concurrent use.
type SmallReader struct {
	bucket *blob.Bucket
	mu     sync.Mutex
	root   string // the bucket's directory (with any prefix), "" until learned
}

// NewSmallReader returns a SmallReader over b.
func NewSmallReader(b *blob.Bucket) *SmallReader { return &SmallReader{bucket: b} }

// ReadAll returns the content of key; a missing object wraps ErrNotFound.
func (r *SmallReader) ReadAll(ctx context.Context, key string) ([]byte, error) {
	direct := directKey(key)
	if path, ok := r.localPath(key); ok {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			return b, nil
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.EISDIR):
			return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
		}
		// Anything else: let the bucket answer, and classify it.
	}
	rd, err := r.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return nil, classify(err, key)
	}
	defer rd.Close()
	if direct {
		r.learn(rd, key)
	}
	b, err := io.ReadAll(rd)
	return b, classify(err, key)
}

// Attributes returns key's size and modification time (classified
// errors; a missing object wraps ErrNotFound). On a local directory it is
// one stat(2) of the file: fileblob's Attributes also opens the attributes
// sidecar, which registryd does not write, and records a trace span —
// together 9 % of registryd's CPU in a push of small images, for the link
// and blob checks. Elsewhere, and for any error but a missing file, the
// bucket answers.
func (r *SmallReader) Attributes(ctx context.Context, key string) (*blob.Attributes, error) {
	if path, ok := r.localPath(key); ok {
		info, err := os.Stat(path)
		switch {
		case err == nil && !info.IsDir():
			return &blob.Attributes{Size: info.Size(), ModTime: info.ModTime()}, nil
		case err == nil, errors.Is(err, fs.ErrNotExist):
			// fileblob calls a directory where the key would be missing.
			return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
		}
	}
	attrs, err := r.bucket.Attributes(ctx, key)
	return attrs, classify(err, key)
}

// directKey reports whether key may be read as a file under the bucket's
// directory: a plain key, not an attributes sidecar's name (which fileblob
// refuses).
func directKey(key string) bool {
	return plainKey(key) && !strings.HasSuffix(key, ".attrs")
}

// localPath is key's file once the bucket's directory is known.
func (r *SmallReader) localPath(key string) (string, bool) {
	root := r.learnedRoot()
	if root == "" || !directKey(key) {
		return "", false
	}
	return root + filepath.FromSlash(key), true
}

func (r *SmallReader) learnedRoot() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.root
}

// learn takes the bucket's directory from an open fileblob reader.
func (r *SmallReader) learn(rd *blob.Reader, key string) {
	if r.learnedRoot() != "" {
		return
	}
	root, ok := fileRoot(rd, key)
	if !ok {
		return
	}
	r.mu.Lock()
	r.root = root
	r.mu.Unlock()
}

// fileRoot is the directory of a fileblob bucket (with any prefix), read off
// an open reader of key: its file's name is that directory followed by the
// key. fileblob has no API for it. ok is false on any other driver.
func fileRoot(rd *blob.Reader, key string) (string, bool) {
	var raw io.Reader
	if !rd.As(&raw) {
		return "", false
	}
	f, ok := raw.(*os.File)
	if !ok {
		return "", false
	}
	root, ok := strings.CutSuffix(f.Name(), filepath.FromSlash(key))
	return root, ok && root != ""
}
