package mirror

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/reference"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// ErrNotMirrored: the request names an upstream (?ns=) or repository this
// registry does not mirror. It is answered with 404, so containerd goes to
// the next host; never with the registry's own repository of that name.
var ErrNotMirrored = errors.New("not mirrored here")

// checkedPrefix holds, per cached tag, when the upstream was last asked
// about it (the object's content: that time):
//
//	_stevedore/mirror/tags/<local repository>/_tags/<tag>
//
// "_tags" cannot be a repository component, so no two keys collide.
const checkedPrefix = "_stevedore/mirror/tags/"

func checkedKey(local, tag string) string { return checkedPrefix + local + "/_tags/" + tag }

// Options tune a Mirror; the zero value is usable.
type Options struct {
	// Logger: default slog.Default().
	Logger *slog.Logger
	// LeaseTTL: a fetch lease not renewed for this long is taken over.
	// Default 30s.
	LeaseTTL time.Duration
	// PollInterval: how often a replica waiting on another's fetch looks
	// for the content. Default 100ms.
	PollInterval time.Duration
	// FetchTimeout bounds one upstream fetch. Default 1h.
	FetchTimeout time.Duration
	// MaxManifestBytes: larger upstream manifests are refused. Default 4 MiB.
	MaxManifestBytes int64
	// Transport reaches the upstreams (tests); default: a transport with
	// each upstream's CA bundle.
	Transport http.RoundTripper
}

// Mirror serves pulls of the configured upstreams from the bucket.
type Mirror struct {
	cfg      Config
	store    *storage.Store
	tags     tags.Store
	opts     Options
	log      *slog.Logger
	id       string             // names this process in leases
	byHost   map[string]*client // by Upstream.Host
	byPrefix map[string]*client // by Prefix(Host)
	flights  group[digest.Digest]
	tagCalls group[string]
	chunks   sync.Pool // []byte of chunkSize, for streamAndStore
}

// New returns a Mirror for cfg (validated) over bucket, keeping cached tags
// in tagStore. It reads the credential and CA files.
func New(cfg *Config, bucket *blob.Bucket, tagStore tags.Store, opts *Options) (*Mirror, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Mirror{cfg: *cfg, store: storage.New(bucket), tags: tagStore, byHost: map[string]*client{}, byPrefix: map[string]*client{}}
	if opts != nil {
		m.opts = *opts
	}
	if m.opts.LeaseTTL <= 0 {
		m.opts.LeaseTTL = 30 * time.Second
	}
	if m.opts.PollInterval <= 0 {
		m.opts.PollInterval = 100 * time.Millisecond
	}
	if m.opts.FetchTimeout <= 0 {
		m.opts.FetchTimeout = time.Hour
	}
	if m.opts.MaxManifestBytes <= 0 {
		m.opts.MaxManifestBytes = 4 << 20
	}
	m.log = m.opts.Logger
	if m.log == nil {
		m.log = slog.Default()
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	m.id = hex.EncodeToString(id)
	for _, up := range m.cfg.Upstreams {
		c, err := newClient(up, m.opts.Transport)
		if err != nil {
			return nil, err
		}
		m.byHost[up.Host] = c
		m.byPrefix[Prefix(up.Host)] = c
	}
	return m, nil
}

// Route is where a mirrored request goes.
type Route struct {
	// Local is the repository caching it here: <Prefix(host)>/<Remote>.
	Local string
	// Remote is the repository's name upstream.
	Remote string
	up     *client
}

// Upstream is the host of the upstream mirrored.
func (rt *Route) Upstream() string { return rt.up.up.Host }

// Route maps a request for repository name. ns is containerd's ?ns= (the
// upstream host); without it, a name whose first component is an
// upstream's prefix is mirrored (the path form: docker.io/library/alpine).
// rt is nil for the registry's own repositories.
func (m *Mirror) Route(ns, name string) (*Route, error) {
	var c *client
	remote := name
	if ns != "" {
		ns = strings.ToLower(ns)
		if ns == "index.docker.io" || ns == "registry-1.docker.io" {
			// Docker Hub's other names (go-containerregistry says
			// index.docker.io where containerd says docker.io).
			ns = dockerHub
		}
		c = m.byHost[ns]
		if c == nil {
			return nil, fmt.Errorf("upstream %q: %w", ns, ErrNotMirrored)
		}
	} else {
		first, rest, ok := strings.Cut(name, "/")
		if c = m.byPrefix[first]; c == nil || !ok {
			return nil, nil
		}
		remote = rest
	}
	remote = remoteName(c.up.Host, remote)
	if !c.up.matches(remote) {
		return nil, fmt.Errorf("%s/%s: %w (not in the upstream's repositories)", c.up.Host, remote, ErrNotMirrored)
	}
	rt := &Route{Local: Prefix(c.up.Host) + "/" + remote, Remote: remote, up: c}
	if err := reference.ValidateName(rt.Local); err != nil {
		return nil, err
	}
	return rt, nil
}

// Mirrored reports whether local repository name belongs to a mirrored
// upstream (pushes there are refused).
func (m *Mirror) Mirrored(name string) bool {
	first, _, _ := strings.Cut(name, "/")
	return m.byPrefix[first] != nil
}

func (m *Mirror) offline() bool { return *m.cfg.Offline }

// ResolveTag returns the digest tag resolves to in rt. A cached tag is
// served for the TTL; then the upstream is asked with a HEAD, and a new
// digest is fetched and the tag moved. When the upstream fails or no
// longer has the tag, the cached digest is served (offline policy).
func (m *Mirror) ResolveTag(ctx context.Context, rt *Route, tag string) (digest.Digest, error) {
	cached, cerr := m.tags.Get(ctx, rt.Local, tag)
	if cerr != nil && !errors.Is(cerr, tags.ErrNotFound) {
		return "", cerr
	}
	if cerr == nil && m.fresh(ctx, rt.Local, tag) {
		return cached.Digest, nil
	}
	var d digest.Digest
	_, err := m.tagCalls.do(ctx, rt.Local+":"+tag, func() error {
		var err error
		d, err = m.checkTag(ctx, rt, tag)
		return err
	})
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		// The request that led the check went away; this one has not.
		d, err = m.checkTag(ctx, rt, tag)
	}
	if err == nil && d == "" {
		// Another request of this process checked it meanwhile.
		desc, gerr := m.tags.Get(ctx, rt.Local, tag)
		if gerr == nil {
			return desc.Digest, nil
		}
		err = gerr
	}
	if err != nil {
		if cerr == nil && m.offline() && !errors.Is(err, context.Canceled) {
			m.log.WarnContext(ctx, "mirror: upstream failed; serving the cached tag", "upstream", rt.Upstream(), "repository", rt.Remote, "tag", tag, "digest", cached.Digest, "error", err)
			return cached.Digest, nil
		}
		return "", err
	}
	return d, nil
}

// checkTag asks the upstream about tag and brings the cache up to date.
func (m *Mirror) checkTag(ctx context.Context, rt *Route, tag string) (digest.Digest, error) {
	up, err := rt.up.headManifest(ctx, rt.Remote, tag)
	if err != nil {
		return "", err
	}
	if err := m.EnsureManifest(ctx, rt, up.Digest); err != nil {
		return "", err
	}
	desc, err := m.store.StatManifest(ctx, rt.Local, up.Digest)
	if err != nil {
		return "", err
	}
	cached, err := m.tags.Get(ctx, rt.Local, tag)
	if err != nil || cached.Digest != up.Digest {
		if err := m.tags.Put(ctx, rt.Local, tag, desc); err != nil {
			// The content is here and verified: serve it; the tag is
			// recorded on a later pull.
			m.log.WarnContext(ctx, "mirror: recording a cached tag", "repository", rt.Local, "tag", tag, "error", err)
			return up.Digest, nil
		}
	}
	if err := storage.WriteSmall(ctx, m.store.Bucket(), checkedKey(rt.Local, tag), []byte(time.Now().UTC().Format(time.RFC3339Nano)), nil); err != nil {
		m.log.WarnContext(ctx, "mirror: recording a tag check", "repository", rt.Local, "tag", tag, "error", err)
	}
	return up.Digest, nil
}

// fresh reports whether tag was checked upstream within the TTL.
func (m *Mirror) fresh(ctx context.Context, local, tag string) bool {
	raw, err := m.store.Bucket().ReadAll(ctx, checkedKey(local, tag))
	if err != nil {
		return false
	}
	at, err := time.Parse(time.RFC3339Nano, string(raw))
	return err == nil && time.Since(at) < m.cfg.TagTTL.Duration
}

// EnsureManifest makes manifest d part of rt.Local: already there, it is
// never asked for upstream (digests do not change); stored for another
// repository, it is linked; else it is fetched once, verified and stored.
func (m *Mirror) EnsureManifest(ctx context.Context, rt *Route, d digest.Digest) error {
	if _, err := m.store.StatManifest(ctx, rt.Local, d); err == nil {
		return nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var mediaType string
	_, err := m.fetchOnce(ctx, d, func(ctx context.Context) error {
		body, ct, err := rt.up.getManifest(ctx, rt.Remote, d, m.opts.MaxManifestBytes)
		if err != nil {
			return err
		}
		if got := d.Algorithm().FromBytes(body); got != d {
			return fmt.Errorf("%s/%s@%s: upstream sent content with digest %s: %w", rt.Upstream(), rt.Remote, d, got, storage.ErrDigestMismatch)
		}
		mediaType = detectMediaType(body, ct)
		return m.store.PutManifest(ctx, rt.Local, d, mediaType, body)
	})
	if err != nil {
		return err
	}
	defer m.ensureRepository(ctx, rt.Local)
	if _, err := m.store.StatManifest(ctx, rt.Local, d); err == nil {
		return nil
	}
	// Fetched by another request, process or repository: link it here.
	body, err := m.store.Bucket().ReadAll(ctx, storage.BlobKey(d))
	if err != nil {
		return storage.Classify(err, storage.BlobKey(d))
	}
	if d.Algorithm().FromBytes(body) != d {
		return fmt.Errorf("stored %s: %w", d, storage.ErrDigestMismatch)
	}
	return m.store.PutManifest(ctx, rt.Local, d, detectMediaType(body, ""), body)
}

// ensureRepository creates rt's Repository object, where the tag store
// keeps them, for content pulled by digest only.
func (m *Mirror) ensureRepository(ctx context.Context, local string) {
	if c, ok := m.tags.(tags.RepositoryCreator); ok {
		if err := c.EnsureRepository(ctx, local); err != nil {
			m.log.WarnContext(ctx, "mirror: creating the Repository of cached content", "repository", local, "error", err)
		}
	}
}

// detectMediaType is the manifest's own mediaType, else the upstream's
// Content-Type, else what its fields say.
func detectMediaType(body []byte, contentType string) string {
	var probe struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	_ = json.Unmarshal(body, &probe)
	switch {
	case probe.MediaType != "":
		return probe.MediaType
	case contentType != "" && contentType != "application/octet-stream" && !strings.HasPrefix(contentType, "text/"):
		return contentType
	case probe.Manifests != nil:
		return ocispec.MediaTypeImageIndex
	}
	return ocispec.MediaTypeImageManifest
}

// BlobSize answers a HEAD for blob d of rt: the stored size, or the
// upstream's without fetching it.
func (m *Mirror) BlobSize(ctx context.Context, rt *Route, d digest.Digest) (int64, error) {
	if info, err := m.store.StatBlob(ctx, rt.Local, d); err == nil {
		return info.Size, nil
	}
	return rt.up.headBlob(ctx, rt.Remote, d)
}

// EnsureBlob makes blob d part of rt.Local, fetching it from the upstream
// when no repository holds it, once however many ask at once (fetchOnce).
// When this call is the one fetching and first is not nil, first is
// called with the size once the upstream answers, and the bytes are
// copied to the writer it returns as they arrive (streamed true), while
// they are stored (streamAndStore); a client that stops reading does not
// stop the fetch. The content is verified before it becomes visible, and
// before the client has it whole: a mismatch leaves nothing stored and
// returns an error after the bytes streamed, which the caller must turn
// into a cut-short response.
func (m *Mirror) EnsureBlob(ctx context.Context, rt *Route, d digest.Digest, first func(size int64) io.Writer) (streamed bool, err error) {
	if _, err := m.store.StatBlob(ctx, rt.Local, d); err == nil {
		return false, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	_, err = m.fetchOnce(ctx, d, func(ctx context.Context) error {
		body, size, err := rt.up.getBlob(ctx, rt.Remote, d)
		if err != nil {
			return err
		}
		defer body.Close()
		if first != nil && size >= 0 {
			streamed = true
			err = m.streamAndStore(ctx, rt, d, size, body, &lenientWriter{w: first(size)})
		} else {
			_, err = m.store.PutBlob(ctx, rt.Local, d, size, body)
		}
		if err != nil {
			m.log.WarnContext(ctx, "mirror: fetching a blob", "upstream", rt.Upstream(), "repository", rt.Remote, "digest", d, "error", err)
		}
		return err
	})
	if err != nil || streamed {
		return streamed, err
	}
	if _, err := m.store.MountAnonymous(ctx, rt.Local, d); err != nil {
		return false, err
	}
	return false, nil
}

// lenientWriter copies to w until a write fails (the client went away),
// then drops the rest: the fetch goes on for the cache. It holds back the
// last byte until finish, called once the content verified: content that
// does not verify never reaches the client whole.
type lenientWriter struct {
	w      io.Writer
	held   []byte
	failed bool
}

func (l *lenientWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(l.held) > 0 {
		l.write(l.held)
	}
	l.write(p[:len(p)-1])
	l.held = append(l.held[:0], p[len(p)-1])
	return len(p), nil
}

func (l *lenientWriter) write(p []byte) {
	if !l.failed && len(p) > 0 {
		if _, err := l.w.Write(p); err != nil {
			l.failed = true
		}
	}
}

// finish sends the byte held back and flushes it, when w can (a Flush
// method returning an error, as http.ResponseController's): the response is
// then complete at the client.
func (l *lenientWriter) finish() {
	l.write(l.held)
	if f, ok := l.w.(interface{ Flush() error }); ok && !l.failed {
		_ = f.Flush()
	}
}
