package storage

import (
	"context"
	"io"
)

// ReadUploadPart opens the upload part at key, for streaming the parts
// into their final key.
func (s *Store) ReadUploadPart(ctx context.Context, key string) (io.ReadCloser, error) {
	r, err := s.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return nil, classify(err, key)
	}
	return r, nil
}

// UploadPartKeys lists the keys of every part of upload id.
func (s *Store) UploadPartKeys(ctx context.Context, id string) ([]string, error) {
	return s.listKeys(ctx, UploadPartsPrefix(id), 0)
}

// HasUploadPart reports whether some part n following the part tagged
// prev exists: a successor written through the same upload state.
func (s *Store) HasUploadPart(ctx context.Context, id string, n int, prev string) (bool, error) {
	keys, err := s.listKeys(ctx, UploadPartPrefix(id, n, prev), 1)
	return len(keys) > 0, err
}

// DeleteUpload removes every object of upload id and, on a local
// directory, the upload's directory, which fileblob leaves behind empty.
func (s *Store) DeleteUpload(ctx context.Context, id string) error {
	if err := s.deletePrefix(ctx, UploadPrefix(id)); err != nil {
		return err
	}
	s.local.RemoveEmptyDir(UploadPrefix(id))
	return nil
}
