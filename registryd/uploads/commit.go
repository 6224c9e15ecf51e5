package uploads

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Commit finishes upload st as blob d of st.Repo. The digest is checked
// against the carried hash state without reading the parts again (unless
// d uses another algorithm than the upload hashed with): the state names
// its parts (State.Last, chained), and a part key is written once by one
// request, so the parts read are the bytes that were hashed. One part is
// copied server-side to its final key; several are streamed into it.
//
// The 201 vouches for d, so the commit is confirmed against the garbage
// collector (docs/gc.md): should it have taken d's content (which existed,
// unreferenced, so nothing was written) while the link was written, the
// parts are still here and the commit runs again.
func (m *Manager) Commit(ctx context.Context, st State, d digest.Digest) (storage.BlobInfo, error) {
	const attempts = 3
	var err error
	for range attempts {
		var info storage.BlobInfo
		info, err = m.commitOnce(ctx, st, d)
		if err == nil {
			// The blob is in place; a failed cleanup only leaves garbage for GC.
			_ = m.store.DeleteUpload(ctx, st.ID)
			return info, nil
		}
		if !errors.Is(err, storage.ErrCollected) {
			return storage.BlobInfo{}, err
		}
	}
	return storage.BlobInfo{}, fmt.Errorf("committing upload %s: %w", st.ID, storage.ErrUnavailable)
}

func (m *Manager) commitOnce(ctx context.Context, st State, d digest.Digest) (storage.BlobInfo, error) {
	if err := m.store.AwaitIntents(ctx, true, d); err != nil {
		return storage.BlobInfo{}, err
	}
	keys, err := m.partKeys(ctx, st)
	if err != nil {
		return storage.BlobInfo{}, err
	}
	if err := m.verify(ctx, st, keys, d); err != nil {
		return storage.BlobInfo{}, err
	}
	switch len(keys) {
	case 0:
		_, err = m.store.WriteContent(ctx, d, 0, eofReader{})
	case 1:
		err = m.store.CopyContent(ctx, d, keys[0], st.Offset)
	default:
		_, err = m.store.WriteContent(ctx, d, st.Offset, m.partsReader(ctx, keys))
	}
	if err != nil {
		return storage.BlobInfo{}, fmt.Errorf("committing upload %s: %w", st.ID, err)
	}
	if err := m.store.LinkBlob(ctx, st.Repo, d); err != nil {
		return storage.BlobInfo{}, err
	}
	if _, err := m.store.ConfirmBlob(ctx, st.Repo, d, true); err != nil {
		return storage.BlobInfo{}, err
	}
	return storage.BlobInfo{Digest: d, Size: st.Offset}, nil
}

// partKeys returns, in order, the keys of the parts st names: its chain,
// followed back from st.Last, found in one listing of the upload's parts.
// Parts written by racing requests with the same state belong to other
// chains and are not read. A part that follows st's last one means st is
// stale, and committing it would commit a prefix of the upload.
func (m *Manager) partKeys(ctx context.Context, st State) ([]string, error) {
	if st.Parts > 0 && st.Last == "" {
		return nil, fmt.Errorf("%w: state names no parts", ErrInvalidToken)
	}
	all, err := m.store.UploadPartKeys(ctx, st.ID)
	if err != nil {
		return nil, fmt.Errorf("listing upload %s: %w", st.ID, err)
	}
	type part struct {
		n         int
		prev, key string
	}
	byTag := make(map[string]part, len(all))
	for _, k := range all {
		n, prev, tag, ok := storage.ParseUploadPartKey(st.ID, k)
		if !ok {
			continue
		}
		if n == st.Parts && prev == st.Last {
			return nil, fmt.Errorf("%w: upload has more than %d parts", ErrOutOfOrder, st.Parts)
		}
		byTag[tag] = part{n, prev, k}
	}
	keys := make([]string, st.Parts)
	tag := st.Last
	for i := st.Parts - 1; i >= 0; i-- {
		p, ok := byTag[tag]
		if !ok || p.n != i || (i == 0) != (p.prev == "") {
			return nil, fmt.Errorf("%w: part %d of upload %s is missing", ErrUnknown, i, st.ID)
		}
		keys[i], tag = p.key, p.prev
	}
	return keys, nil
}

func (m *Manager) verify(ctx context.Context, st State, keys []string, d digest.Digest) error {
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
	if _, err := io.Copy(v, m.partsReader(ctx, keys)); err != nil {
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
func (m *Manager) partsReader(ctx context.Context, keys []string) io.Reader {
	next := 0
	var cur io.ReadCloser
	return readerFunc(func(b []byte) (int, error) {
		for {
			if cur == nil {
				if next >= len(keys) {
					return 0, io.EOF
				}
				r, err := m.store.ReadUploadPart(ctx, keys[next])
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
