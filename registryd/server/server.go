// Package server is registryd's HTTP handler: the OCI distribution-spec
// (v1.1 plus the newer endpoints) and /v2/_catalog over one bucket.
package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/auth"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/reference"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

// Options tunes a server; the zero value (or nil) is usable.
type Options struct {
	// MaxManifestBytes refuses larger manifests with 413. Default 4 MiB.
	MaxManifestBytes int64
	// Secret signs upload state tokens; every replica sharing a bucket
	// must use the same one. Default: random (single replica only).
	Secret []byte
	// ChunkMinLength, when positive, is announced as OCI-Chunk-Min-Length.
	ChunkMinLength int64
	// PageSize caps n for tags, catalog and referrers pages. Default 1000.
	PageSize int
	// RedirectTTL, when positive, answers blob GETs with a 307 to a URL
	// signed for that long, where the backend can sign (S3, GCS, Azure);
	// other backends keep serving the bytes themselves.
	RedirectTTL time.Duration
	// BeforeSign adjusts the signed URLs of RedirectTTL for the backend
	// (internal/bucket.BeforeSign); nil for most.
	BeforeSign func(asFunc func(any) bool) error
	// ListStart starts catalog listings after a key on drivers beyond S3
	// (internal/bucket.ListStart: GCS); nil: they list from the start.
	ListStart storage.ListStart
	// Logger receives one line per request. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the server's metrics. Nil: not exported.
	Registerer prometheus.Registerer
	// Authorizer is asked about every request, with the access its route
	// names, before the handler runs. Nil: everything is allowed.
	Authorizer Authorizer
	// MaxConcurrentRequests caps the requests served at once; the excess
	// gets 429 TOOMANYREQUESTS with Retry-After. Default 1024; negative:
	// no cap.
	MaxConcurrentRequests int
	// BodyTimeout and BodyMinBytes: a request or response body that moves
	// fewer than BodyMinBytes in BodyTimeout is cut off (408 for a request
	// body). The deadline is renewed as the bytes move, so a body of any
	// size passes at any rate above the minimum. Defaults 30s and 64 KiB;
	// negative BodyTimeout: off.
	BodyTimeout  time.Duration
	BodyMinBytes int64
	// UploadLifetime refuses to resume an upload started longer ago
	// (BLOB_UPLOAD_UNKNOWN); the garbage collector sweeps it after that.
	// Default 24h.
	UploadLifetime time.Duration
	// GCTouchInterval: a HEAD that finds a repository link older than
	// this writes it again, so the garbage collector's grace period runs
	// from the HEAD (docs/gc.md). Default 1m; negative: every HEAD.
	GCTouchInterval time.Duration
	// Mirror, when set, serves pulls of its upstreams (containerd's ?ns=,
	// or the path form <host>/<repo>) from the cache or the upstream, and
	// refuses pushes into their repositories (docs/mirror.md).
	Mirror *mirror.Mirror
}

// Authorizer decides whether a request may perform an access; it returns
// nil or the spec error to send (401 with a challenge, 403, 503).
// *auth.Guard is one.
type Authorizer interface {
	Authorize(ctx context.Context, r *http.Request, a auth.Access) error
}

const (
	defaultMaxManifestBytes = 4 << 20
	defaultPageSize         = 1000
	defaultGCTouchInterval  = time.Minute
)

type routeKey struct {
	endpoint endpoint
	method   string
}

type server struct {
	store   *storage.Store
	tags    tags.Store
	uploads *uploads.Manager
	opts    Options
	log     *slog.Logger
	metrics *metrics
	// cannotSign logs once that a backend without signing serves every
	// blob through registryd: one line, not one per GET.
	cannotSign sync.Once
	routes     map[routeKey]route
	// allow is the Allow header of a 405 on each endpoint.
	allow map[endpoint]string
	// slots holds a token per request in flight (nil: no cap).
	slots chan struct{}
	// copyBuffers hold the buffers responses are copied through.
	copyBuffers sync.Pool
}

// New returns the registry handler over bucket, keeping tags in tagStore.
func New(bucket *blob.Bucket, tagStore tags.Store, opts *Options) http.Handler {
	s := &server{store: storage.New(bucket), tags: tagStore, routes: map[routeKey]route{}}
	if opts != nil {
		s.opts = *opts
	}
	if s.opts.MaxManifestBytes <= 0 {
		s.opts.MaxManifestBytes = defaultMaxManifestBytes
	}
	if s.opts.PageSize <= 0 {
		s.opts.PageSize = defaultPageSize
	}
	if s.opts.MaxConcurrentRequests == 0 {
		s.opts.MaxConcurrentRequests = defaultMaxConcurrentRequests
	}
	if s.opts.MaxConcurrentRequests > 0 {
		s.slots = make(chan struct{}, s.opts.MaxConcurrentRequests)
	}
	if s.opts.BodyTimeout == 0 {
		s.opts.BodyTimeout = defaultBodyTimeout
	}
	if s.opts.BodyMinBytes <= 0 {
		s.opts.BodyMinBytes = defaultBodyMinBytes
	}
	size := copyBufferSize(s.opts.BodyMinBytes)
	s.copyBuffers.New = func() any { b := make([]byte, size); return &b }
	if len(s.opts.Secret) == 0 {
		s.opts.Secret = make([]byte, 32)
		_, _ = rand.Read(s.opts.Secret)
	}
	s.log = s.opts.Logger
	if s.log == nil {
		s.log = slog.Default()
	}
	s.store.WithBeforeSign(s.opts.BeforeSign).WithListStart(s.opts.ListStart)
	if s.opts.GCTouchInterval == 0 {
		s.opts.GCTouchInterval = defaultGCTouchInterval
	}
	s.uploads = uploads.NewManager(s.store, s.opts.Secret, s.opts.UploadLifetime)
	s.metrics = newMetrics(s.opts.Registerer)
	methods := map[endpoint][]string{}
	for _, rt := range routeTable() {
		s.routes[routeKey{rt.endpoint, rt.method}] = rt
		methods[rt.endpoint] = append(methods[rt.endpoint], rt.method)
	}
	s.allow = map[endpoint]string{}
	for ep, ms := range methods {
		slices.Sort(ms)
		s.allow[ep] = strings.Join(ms, ", ")
	}
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	r = r.WithContext(auth.WithIdentitySlot(r.Context())) // the auth guard records who; the log lines read it
	pw, readProgress, writeProgress := s.withProgressDeadlines(w, r)
	rec := &recorder{ResponseWriter: pw, status: http.StatusOK}
	body := &countingReader{r: r.Body}
	r.Body = body
	var rt string
	var err error
	if release, ok := s.admit(); ok {
		rt, err = s.dispatchRecovering(rec, r)
		release()
	} else {
		rt, err = "none", &errcode.Error{Code: errcode.TooManyRequests, RetryAfter: 1, Detail: "too many requests in flight"}
	}
	if readProgress.timedOut && !rec.wroteHeader {
		// However the handler reported it, the client was too slow; the
		// rest of its body is unread, so the connection cannot be reused.
		rec.Header().Set("Connection", "close")
		err = errcode.RequestTimeout.Wrap(err, nil)
	}
	if writeProgress.supported {
		// One more window for what net/http writes after the handler.
		defer writeProgress.renew()
	}
	var p *panicked
	if errors.As(err, &p) {
		s.metrics.panics.Inc()
		s.log.ErrorContext(r.Context(), "handler panicked", "panic", p.value, "method", r.Method, "path", r.URL.Path,
			"route", rt, "stack", string(p.stack))
		if rec.wroteHeader {
			// Too late for an error envelope: cut the response short so
			// the client sees a truncated body, never a complete-looking one.
			s.metrics.observe(rt, r.Method, rec.status, body.n, rec.n)
			panic(http.ErrAbortHandler)
		}
		errcode.Write(rec, r, err)
	} else if err != nil {
		e := errcode.Write(rec, r, err)
		if e.Code.Status >= 500 {
			s.log.ErrorContext(r.Context(), "request failed", "error", err)
		}
	}
	s.metrics.observe(rt, r.Method, rec.status, body.n, rec.n)
	s.log.InfoContext(r.Context(), "request",
		"method", r.Method, "path", r.URL.Path, "route", rt, "status", rec.status,
		"bytes_in", body.n, "bytes_out", rec.n, "duration", time.Since(start), "remote", r.RemoteAddr,
		"user", auth.UserFrom(r.Context()))
	s.audit(r, rec, rec.status)
}

// panicked is a handler's panic turned into an error, with the stack of
// the goroutine where it happened.
type panicked struct {
	value any
	stack []byte
}

func (p *panicked) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// dispatchRecovering is dispatch with a panic turned into UNKNOWN (500), so
// one bad request costs one error answer, not the connection.
// http.ErrAbortHandler is the deliberate way to abort and passes through.
func (s *server) dispatchRecovering(w http.ResponseWriter, r *http.Request) (rt string, err error) {
	rt = "none"
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			err = errcode.Unknown.Wrap(&panicked{value: v, stack: debug.Stack()}, nil)
		}
	}()
	return s.dispatch(w, r, &rt)
}

// dispatch finds the route and validates the repository name before any
// handler (and so any bucket key) sees it.
// The route's name goes to *name as soon as it is known, so a panic
// further on is still labelled with it.
func (s *server) dispatch(w http.ResponseWriter, r *http.Request, name *string) (string, error) {
	ep, p := parsePath(r.URL.Path)
	if ep == epNone {
		return "none", errcode.NotFound.With(r.URL.Path)
	}
	rt, ok := s.routes[routeKey{ep, r.Method}]
	if !ok {
		e := errcode.Unsupported.With("method " + r.Method + " not allowed here")
		e.Header = http.Header{"Allow": {s.allow[ep]}}
		return "none", e
	}
	*name = rt.name
	if ep != epBase && ep != epCatalog {
		if err := reference.ValidateName(p.name); err != nil {
			return rt.name, errcode.NameInvalid.Wrap(err, p.name)
		}
		mrt, err := s.mirrorRoute(r, p.name)
		if err != nil {
			return rt.name, err
		}
		if mrt != nil {
			if rt.action == auth.Push {
				return rt.name, errcode.Denied.With(mrt.Local + " caches " + mrt.Upstream() + ": push to the upstream instead")
			}
			p.name, p.mirror = mrt.Local, mrt
		}
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if err := s.authorize(r, auth.Access{Repository: p.name, Action: rt.action}); err != nil {
		return rt.name, err
	}
	return rt.name, rt.handle(s, w, r, p)
}

func (s *server) authorize(r *http.Request, a auth.Access) error {
	if s.opts.Authorizer == nil {
		return nil
	}
	return s.opts.Authorizer.Authorize(r.Context(), r, a)
}

func (s *server) getBase(w http.ResponseWriter, r *http.Request, _ pathParams) error {
	writeJSON(w, r, http.StatusOK, "application/json", struct{}{})
	return nil
}
