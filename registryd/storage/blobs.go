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
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// SignedURL returns a URL a client can GET blob d from directly, valid for
// ttl, or ErrUnsupported when the backend cannot sign (mem://, file://
// without a signer). Callers check the repository link first.
func (s *Store) SignedURL(ctx context.Context, d digest.Digest, ttl time.Duration) (string, error) {
	u, err := s.bucket.SignedURL(ctx, BlobKey(d), &blob.SignedURLOptions{Expiry: ttl, Method: "GET", BeforeSign: s.beforeSign})
	if gcerrors.Code(err) == gcerrors.Unimplemented {
		return "", fmt.Errorf("signing %s: %w", d, ErrUnsupported)
	}
	return u, classify(err, BlobKey(d))
}

// BlobInfo describes stored content.
type BlobInfo struct {
	Digest digest.Digest
	Size   int64
}

// StatBlob returns the size of blob d if it is linked into repository name,
// as a blob or (as distribution allows) as a manifest.
func (s *Store) StatBlob(ctx context.Context, name string, d digest.Digest) (BlobInfo, error) {
	ok, err := s.Exists(ctx, layerLinkKey(name, d))
	if err == nil && !ok {
		ok, err = s.Exists(ctx, manifestLinkKey(name, d))
	}
	if err != nil {
		return BlobInfo{}, err
	}
	if !ok {
		return BlobInfo{}, fmt.Errorf("blob %s in %s: %w", d, name, ErrNotFound)
	}
	return s.statContent(ctx, d)
}

func (s *Store) statContent(ctx context.Context, d digest.Digest) (BlobInfo, error) {
	attrs, err := s.local.Attributes(ctx, BlobKey(d))
	if err != nil {
		return BlobInfo{}, err
	}
	return BlobInfo{Digest: d, Size: attrs.Size}, nil
}

// OpenBlob opens length bytes (-1: to the end) of blob d from offset.
// Callers check the repository link with StatBlob first.
func (s *Store) OpenBlob(ctx context.Context, d digest.Digest, offset, length int64) (io.ReadCloser, error) {
	r, err := s.bucket.NewRangeReader(ctx, BlobKey(d), offset, length, nil)
	if err != nil {
		return nil, classify(err, BlobKey(d))
	}
	var raw io.Reader
	if r.As(&raw) {
		return rawReader{Reader: r, raw: raw}, nil
	}
	return remoteReader{Reader: r, bufs: &s.copyBufs}, nil
}

// remoteCopyBuffer is the chunk a blob from a remote object store (S3, GCS,
// Azure) is copied to the client in. Left to itself the copy went through
// net/http's 32 KiB buffer, a read and a write system call for each 32 KiB
// (measured, make bench-s3: a curl GET of 64 MiB layers from versitygw ran
// at 0.76× distribution, which reads its storage through a 4 MiB buffer).
const remoteCopyBuffer = 256 << 10

// remoteReader copies a blob from a remote object store through a pooled
// buffer of remoteCopyBuffer bytes.
type remoteReader struct {
	*blob.Reader
	bufs *sync.Pool
}

func (r remoteReader) WriteTo(w io.Writer) (int64, error) {
	b, _ := r.bufs.Get().(*[]byte)
	if b == nil {
		buf := make([]byte, remoteCopyBuffer)
		b = &buf
	}
	defer r.bufs.Put(b)
	// Neither side's own copy method: they would pick their own buffer.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{r.Reader}, *b)
}

// rawReader hands the driver's own reader to a writer that can read from
// it directly. For fileblob that is the *os.File (or a LimitedReader of
// it), read straight into the writer's buffer; *blob.Reader's own WriteTo
// hides the file behind a copy of its own.
type rawReader struct {
	*blob.Reader
	raw io.Reader
}

func (r rawReader) WriteTo(w io.Writer) (int64, error) {
	if rf, ok := w.(io.ReaderFrom); ok {
		return rf.ReadFrom(r.raw)
	}
	return r.Reader.WriteTo(w)
}

// PutBlob streams r into blob d and links it into repository name. The
// content is verified while it streams and written with IfNotExist: on a
// digest or size mismatch (size < 0: unknown), or when ctx ends, the
// writer's context is cancelled so nothing partial becomes visible.
//
// The 201 that follows vouches for d, so the write is confirmed against
// the garbage collector (ConfirmBlob, docs/gc.md). The body is consumed by
// then: content the collector took meanwhile cannot be written again, and
// the push fails as unavailable, for the client to retry.
func (s *Store) PutBlob(ctx context.Context, name string, d digest.Digest, size int64, r io.Reader) (BlobInfo, error) {
	return s.putBlob(ctx, name, d, size, r, d.Verifier())
}

// PutVerifiedBlob is PutBlob for content its caller hashes as it reads it
// (the mirror, streaming to a client): r must end with an error, not
// io.EOF, when the content does not match d. It is not hashed again.
func (s *Store) PutVerifiedBlob(ctx context.Context, name string, d digest.Digest, size int64, r io.Reader) (BlobInfo, error) {
	return s.putBlob(ctx, name, d, size, r, verifiedByCaller{})
}

// verifiedByCaller is the Verifier of content its reader vouches for.
type verifiedByCaller struct{}

func (verifiedByCaller) Write(p []byte) (int, error) { return len(p), nil }
func (verifiedByCaller) Verified() bool              { return true }

func (s *Store) putBlob(ctx context.Context, name string, d digest.Digest, size int64, r io.Reader, verifier digest.Verifier) (BlobInfo, error) {
	// Waiting out a collection of d first makes losing it rare.
	if err := s.AwaitIntents(ctx, true, d); err != nil {
		return BlobInfo{}, err
	}
	n, err := s.writeContent(ctx, d, size, r, verifier)
	if err != nil {
		return BlobInfo{}, err
	}
	if err := s.LinkBlob(ctx, name, d); err != nil {
		return BlobInfo{}, err
	}
	if _, err := s.ConfirmBlob(ctx, name, d, true); err != nil {
		if errors.Is(err, ErrCollected) {
			return BlobInfo{}, fmt.Errorf("%s was garbage-collected while it was pushed: %w", d, ErrUnavailable)
		}
		return BlobInfo{}, err
	}
	return BlobInfo{Digest: d, Size: n}, nil
}

// WriteContent writes verified content to blobs/ without linking it.
func (s *Store) WriteContent(ctx context.Context, d digest.Digest, size int64, r io.Reader) (int64, error) {
	return s.writeContent(ctx, d, size, r, d.Verifier())
}

func (s *Store) writeContent(ctx context.Context, d digest.Digest, size int64, r io.Reader, verifier digest.Verifier) (int64, error) {
	key := BlobKey(d)
	if ok, err := s.Exists(ctx, key); err != nil {
		return 0, err
	} else if ok {
		// Already stored: still verify what the client sent, but do not
		// upload it again.
		return verifyOnly(d, size, io.TeeReader(r, verifier), verifier)
	}
	// The check runs when the client's bytes end, before the driver may
	// commit: a mismatch cancels the write, so nothing partial or wrong
	// is ever visible under blobs/.
	n, err := StreamDurable(ctx, s.local, key, io.TeeReader(r, verifier), &blob.WriterOptions{IfNotExist: true}, func(n int64) error {
		switch {
		case size >= 0 && n != size:
			return fmt.Errorf("%s: got %d bytes, want %d: %w", d, n, size, ErrSizeMismatch)
		case !verifier.Verified():
			return fmt.Errorf("%s: %w", d, ErrDigestMismatch)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrExists) {
		if !errors.Is(err, ErrSizeMismatch) && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("streaming %s: %w", d, err)
		}
		return n, err
	}
	return n, nil
}

// MaxServerSideCopy is the largest object CopyContent copies server-side:
// S3's CopyObject refuses sources over 5 GiB (beyond that it takes a
// multipart UploadPartCopy, which gocloud does not issue). Azure and GCS
// copy more, but one rule for every backend keeps behaviour the same.
// A variable so tests can lower it.
var MaxServerSideCopy int64 = 5 << 30

// CopyContent makes blobs/d a copy of the size-byte object at srcKey,
// unless d is already stored: a hard link on a local directory, else
// server-side up to MaxServerSideCopy, streamed through registryd (and
// verified again on the way) beyond.
func (s *Store) CopyContent(ctx context.Context, d digest.Digest, srcKey string, size int64) error {
	if ok, err := s.Exists(ctx, BlobKey(d)); err != nil || ok {
		return err
	}
	if s.linkLocal(ctx, BlobKey(d), srcKey) {
		// The part's data was not synced when it was written: sync it
		// now, under its final name.
		return s.local.SyncFile(ctx, BlobKey(d))
	}
	if size <= MaxServerSideCopy {
		if err := s.bucket.Copy(ctx, BlobKey(d), srcKey, nil); err != nil {
			return classify(err, srcKey)
		}
		return s.local.SyncFile(ctx, BlobKey(d))
	}
	r, err := s.bucket.NewReader(ctx, srcKey, nil)
	if err != nil {
		return classify(err, srcKey)
	}
	defer r.Close()
	_, err = s.WriteContent(ctx, d, size, r)
	return err
}

// linkLocal hard-links dstKey to srcKey when the bucket is a local
// directory (fileblob), and reports whether it did. fileblob's Copy reads
// and rewrites every byte, which for a pushed layer doubled the disk
// writes of a push; a link costs one syscall and, like the IfNotExist of a
// write, never replaces an existing object. fileblob has no API for this,
// so the paths come from the source's open file: its name ends with the
// source key, and the part before is the bucket's root (with any prefix).
// Anything unexpected (another driver, keys fileblob would escape, a
// filesystem without hard links) reports false, and the caller copies.
func (s *Store) linkLocal(ctx context.Context, dstKey, srcKey string) bool {
	var dirInfo os.FileInfo
	if !s.bucket.As(&dirInfo) || !plainKey(srcKey) || !plainKey(dstKey) {
		return false
	}
	r, err := s.bucket.NewReader(ctx, srcKey, nil)
	if err != nil {
		return false
	}
	defer r.Close()
	root, ok := fileRoot(r, srcKey)
	if !ok {
		return false
	}
	src, dst := root+filepath.FromSlash(srcKey), root+filepath.FromSlash(dstKey)
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		return false
	}
	err = os.Link(src, dst)
	// Exists: content-addressed, so what is there holds the same bytes.
	return err == nil || errors.Is(err, fs.ErrExist)
}

// plainKey reports whether fileblob stores key under its own name: no
// characters or sequences it escapes.
func plainKey(key string) bool {
	if key == "" || strings.HasSuffix(key, "/") || strings.Contains(key, "//") || strings.Contains(key, "../") {
		return false
	}
	for _, c := range key {
		if c < 32 || c == '\\' {
			return false
		}
	}
	return true
}

// LinkBlob records that blob d belongs to repository name.
func (s *Store) LinkBlob(ctx context.Context, name string, d digest.Digest) error {
	return s.writeSmall(ctx, layerLinkKey(name, d), []byte(d.String()), "text/plain")
}

// MountBlob links blob d, linked in repository from, into repository name.
// Content the garbage collector is taking is refused at once (ErrNotFound,
// ErrCollected): the client then uploads it, which is always correct.
func (s *Store) MountBlob(ctx context.Context, name, from string, d digest.Digest) (BlobInfo, error) {
	if _, err := s.StatBlob(ctx, from, d); err != nil {
		return BlobInfo{}, err
	}
	if err := s.LinkBlob(ctx, name, d); err != nil {
		return BlobInfo{}, err
	}
	return s.ConfirmBlob(ctx, name, d, false)
}

// MountAnonymous links blob d into repository name when its content is
// stored at all (the spec's mount without from).
func (s *Store) MountAnonymous(ctx context.Context, name string, d digest.Digest) (BlobInfo, error) {
	info, err := s.statContent(ctx, d)
	if err != nil {
		return BlobInfo{}, err
	}
	return info, s.LinkBlob(ctx, name, d)
}

// DeleteBlob unlinks blob d from repository name. The content stays for
// other repositories; garbage collection removes it when unreferenced.
func (s *Store) DeleteBlob(ctx context.Context, name string, d digest.Digest) error {
	return s.delete(ctx, layerLinkKey(name, d))
}

func verifyOnly(d digest.Digest, size int64, r io.Reader, v digest.Verifier) (int64, error) {
	n, err := io.Copy(io.Discard, r)
	switch {
	case err != nil:
		return n, fmt.Errorf("streaming %s: %w", d, err)
	case size >= 0 && n != size:
		return n, fmt.Errorf("%s: got %d bytes, want %d: %w", d, n, size, ErrSizeMismatch)
	case !v.Verified():
		return n, fmt.Errorf("%s: %w", d, ErrDigestMismatch)
	}
	return n, nil
}
