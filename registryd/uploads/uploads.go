package uploads

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"regexp"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Errors of this package; match with errors.Is.
var (
	// ErrUnknown: no upload in progress with this id (never started,
	// finished or cancelled).
	ErrUnknown = errors.New("upload unknown")
	// ErrOutOfOrder: the chunk does not start where the upload ends, or
	// the token is stale (another chunk was written with it already).
	ErrOutOfOrder = errors.New("chunk out of order")
	// ErrDigestMismatch: the uploaded bytes do not hash to the digest given.
	ErrDigestMismatch = errors.New("upload does not match digest")
	// ErrSizeMismatch: a chunk did not carry the length it announced.
	ErrSizeMismatch = errors.New("chunk does not match its length")
)

var idRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidID reports whether id has the shape of an id we hand out, so that
// nothing else reaches a bucket key.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Manager runs uploads over a store. It keeps no state between calls.
type Manager struct {
	store    *storage.Store
	signer   *Signer
	lifetime time.Duration
}

// DefaultLifetime is how long an upload may run when NewManager is not
// told otherwise; the garbage collector sweeps it after that (docs/gc.md).
const DefaultLifetime = 24 * time.Hour

// NewManager returns a Manager signing tokens with secret, refusing uploads
// that started more than lifetime ago (<= 0: DefaultLifetime).
func NewManager(store *storage.Store, secret []byte, lifetime time.Duration) *Manager {
	if lifetime <= 0 {
		lifetime = DefaultLifetime
	}
	return &Manager{store: store, signer: NewSigner(secret), lifetime: lifetime}
}

// Token is the signed form of st, for the Location header.
func (m *Manager) Token(st State) string { return m.signer.Encode(st) }

func newHash(alg string) (hash.Hash, error) {
	switch digest.Algorithm(alg) {
	case digest.SHA256:
		return sha256.New(), nil
	case digest.SHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unsupported digest algorithm %q", alg)
}

// Start begins an upload in repo hashing with alg, recording a marker
// object that says the upload is live.
func (m *Manager) Start(ctx context.Context, repo string, alg digest.Algorithm) (State, error) {
	if _, err := newHash(string(alg)); err != nil {
		return State{}, err
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	now := time.Now()
	st := State{ID: hex.EncodeToString(b[:]), Repo: repo, Alg: string(alg), Started: now.UnixNano()}
	key := storage.UploadMarkerKey(st.ID)
	err := storage.WriteSmall(ctx, m.store.Bucket(), key, []byte(now.UTC().Format(time.RFC3339Nano)), nil)
	if err != nil {
		return State{}, fmt.Errorf("starting upload: %w", err)
	}
	return st, nil
}

// Resume decodes token for upload id of repo and checks the upload is live.
// A token that does not verify, or was issued for another upload or
// repository, wraps ErrInvalidToken; a finished or cancelled one ErrUnknown.
func (m *Manager) Resume(ctx context.Context, repo, id, token string) (State, error) {
	if !ValidID(id) || token == "" {
		return State{}, fmt.Errorf("%w: %.64q", ErrUnknown, id)
	}
	st, err := m.signer.Decode(token)
	if err != nil {
		return State{}, err
	}
	if st.ID != id || st.Repo != repo {
		return State{}, fmt.Errorf("%w: token is for another upload", ErrInvalidToken)
	}
	if _, err := newHash(st.Alg); err != nil {
		return State{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if st.Duration() > m.lifetime {
		// The garbage collector may be deleting its parts: never resume.
		return State{}, fmt.Errorf("%w: %s expired after %s", ErrUnknown, id, m.lifetime)
	}
	ok, err := m.store.Exists(ctx, storage.UploadMarkerKey(id))
	if err != nil {
		return State{}, fmt.Errorf("checking upload %s: %w", id, err)
	}
	if !ok {
		return State{}, fmt.Errorf("%w: %s", ErrUnknown, id)
	}
	return st, nil
}

// Duration is how long the upload has been running.
func (st State) Duration() time.Duration { return time.Since(time.Unix(0, st.Started)) }

// Range is the value of the spec's Range header: the inclusive byte range
// received so far ("0-0" when empty, as distribution answers).
func (st State) Range() string {
	end := st.Offset - 1
	if end < 0 {
		end = 0
	}
	return "0-" + strconv.FormatInt(end, 10)
}

func (st State) restoreHash() (hash.Hash, error) {
	h, err := newHash(st.Alg)
	if err != nil {
		return nil, err
	}
	if len(st.Hash) > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st.Hash); err != nil {
			return nil, fmt.Errorf("%w: hash state: %w", ErrInvalidToken, err)
		}
	}
	return h, nil
}

// Append writes the chunk r (size bytes; -1 when unknown) as the next part
// and returns the advanced state. Nothing is written for an empty chunk.
//
// Each write goes to a key of its own (a random tag, chained to the
// previous part's): two requests racing with one state both write, but to
// different keys, and each gets back a state naming its own chain. So the
// bytes a state's hash covers are exactly the bytes its commit reads; no
// race (and no backend whose IfNotExist is not atomic) can swap them.
func (m *Manager) Append(ctx context.Context, st State, r io.Reader, size int64) (State, error) {
	h, err := st.restoreHash()
	if err != nil {
		return st, err
	}
	// An empty chunk writes no part: look for a first byte before
	// starting a write that would otherwise store an empty object.
	br := bufio.NewReaderSize(r, 1)
	if _, err := br.Peek(1); err == io.EOF {
		if size > 0 {
			return st, fmt.Errorf("got 0 bytes, want %d: %w", size, ErrSizeMismatch)
		}
		return st, nil
	} else if err != nil {
		return st, err
	}
	// A stale state (a chunk was written with it already) is out of order:
	// the spec's 416. This check is for the client's sake; safety does not
	// rest on it, since a racing write lands on a key of its own.
	if ok, err := m.store.HasUploadPart(ctx, st.ID, st.Parts, st.Last); err != nil {
		return st, fmt.Errorf("checking upload %s: %w", st.ID, err)
	} else if ok {
		return st, fmt.Errorf("%w: part %d already written", ErrOutOfOrder, st.Parts)
	}
	tag := newTag()
	key := storage.UploadPartKey(st.ID, st.Parts, st.Last, tag)
	// A short or failed chunk cancels the write: no part is left behind.
	n, err := storage.Stream(ctx, m.store.Bucket(), key, io.TeeReader(br, h), &blob.WriterOptions{IfNotExist: true}, func(n int64) error {
		if size >= 0 && n != size {
			return fmt.Errorf("got %d bytes, want %d: %w", n, size, ErrSizeMismatch)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("writing %s: %w", key, err)
	}
	st.Offset += n
	st.Parts++
	st.Last = tag
	if st.Hash, err = h.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return st, err
	}
	stateKey := storage.UploadStateKey(st.ID)
	if err := storage.WriteSmall(ctx, m.store.Bucket(), stateKey, []byte(m.Token(st)), nil); err != nil {
		return st, fmt.Errorf("saving upload state: %w", err)
	}
	return st, nil
}

// newTag is a part's random name: 96 bits, so no two writes share one.
func newTag() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Latest returns the newest state of the upload: st, or the one saved in
// the bucket when st is stale (its holder missed the answer to a PATCH).
func (m *Manager) Latest(ctx context.Context, st State) State {
	b, err := m.store.Bucket().ReadAll(ctx, storage.UploadStateKey(st.ID))
	if err != nil {
		return st
	}
	saved, err := m.signer.Decode(string(b))
	if err != nil || saved.ID != st.ID || saved.Repo != st.Repo || saved.Parts <= st.Parts {
		return st
	}
	return saved
}

// Cancel removes the upload's marker and parts.
func (m *Manager) Cancel(ctx context.Context, st State) error {
	return m.store.DeleteUpload(ctx, st.ID)
}
