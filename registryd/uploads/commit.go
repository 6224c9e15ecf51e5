package uploads

import (
	"context"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Commit finishes upload st as blob d of st.Repo. The digest is checked
// against the carried hash state without reading the parts again (unless
// d uses another algorithm than the upload hashed with). One part is
// copied server-side to its final key; several are streamed into it.
func (m *Manager) Commit(ctx context.Context, st State, d digest.Digest) (storage.BlobInfo, error) {
	// A stale token would commit a prefix of the upload.
	next := storage.UploadPartKey(st.ID, st.Parts)
	if ok, err := m.store.Bucket().Exists(ctx, next); err != nil {
		return storage.BlobInfo{}, storage.Classify(err, next)
	} else if ok {
		return storage.BlobInfo{}, fmt.Errorf("%w: upload has more than %d parts", ErrOutOfOrder, st.Parts)
	}
	if err := m.verify(ctx, st, d); err != nil {
		return storage.BlobInfo{}, err
	}
	var err error
	switch st.Parts {
	case 0:
		_, err = m.store.WriteContent(ctx, d, 0, eofReader{})
	case 1:
		err = m.store.CopyContent(ctx, d, storage.UploadPartKey(st.ID, 0), st.Offset)
	default:
		_, err = m.store.WriteContent(ctx, d, st.Offset, m.partsReader(ctx, st))
	}
	if err != nil {
		return storage.BlobInfo{}, fmt.Errorf("committing upload %s: %w", st.ID, err)
	}
	if err := m.store.LinkBlob(ctx, st.Repo, d); err != nil {
		return storage.BlobInfo{}, err
	}
	// The blob is in place; a failed cleanup only leaves garbage for GC.
	_ = m.store.DeleteUpload(ctx, st.ID)
	return storage.BlobInfo{Digest: d, Size: st.Offset}, nil
}

func (m *Manager) verify(ctx context.Context, st State, d digest.Digest) error {
	if string(d.Algorithm()) == st.Alg {
		h, err := st.restoreHash()
		if err != nil {
			return err
		}
		if digest.NewDigest(d.Algorithm(), h) != d {
			return fmt.Errorf("%w: %s", ErrDigestMismatch, d)
		}
		return nil
	}
	// The client started the upload without ?digest-algorithm but names
	// another algorithm now: hash the parts once more with it.
	v := d.Verifier()
	if _, err := io.Copy(v, m.partsReader(ctx, st)); err != nil {
		return fmt.Errorf("re-reading upload %s: %w", st.ID, err)
	}
	if !v.Verified() {
		return fmt.Errorf("%w: %s", ErrDigestMismatch, d)
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// partsReader reads the parts of an upload in order, opening one at a
// time so a many-part upload holds one backend stream.
func (m *Manager) partsReader(ctx context.Context, st State) io.Reader {
	next := 0
	var cur io.ReadCloser
	return readerFunc(func(b []byte) (int, error) {
		for {
			if cur == nil {
				if next >= st.Parts {
					return 0, io.EOF
				}
				r, err := m.store.ReadUploadPart(ctx, st.ID, next)
				if err != nil {
					return 0, err
				}
				cur, next = r, next+1
			}
			n, err := cur.Read(b)
			if err == io.EOF {
				_ = cur.Close()
				cur = nil
				if n > 0 {
					return n, nil
				}
				continue
			}
			return n, err
		}
	})
}
