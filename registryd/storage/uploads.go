package storage

import (
	"context"
	"io"
)

// ReadUploadPart opens part n of upload id, for streaming the parts into
// their final key.
func (s *Store) ReadUploadPart(ctx context.Context, id string, n int) (io.ReadCloser, error) {
	r, err := s.bucket.NewReader(ctx, UploadPartKey(id, n), nil)
	if err != nil {
		return nil, classify(err, UploadPartKey(id, n))
	}
	return r, nil
}

// DeleteUpload removes every object of upload id.
func (s *Store) DeleteUpload(ctx context.Context, id string) error {
	return s.deletePrefix(ctx, UploadPrefix(id))
}
