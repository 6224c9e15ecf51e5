// Command registryd is Stevedore's stateless OCI distribution server.
//
//	registryd --addr 127.0.0.1:5000 --storage file:///var/tmp/stevedore
//
// Blobs, manifests, tags (the bucket tag store) and upload parts all live in
// the bucket named by --storage (any gocloud.dev/blob URL), so any number of
// replicas may share it given the same --http-secret-file.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/version"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

type config struct {
	addr, debugAddr, storageURL, storagePrefix, secretFile, logFormat string
	maxManifestBytes, chunkMinLength                                  int64
	// kubernetes tag store: the Registry registryd serves.
	registry, namespace, kubeconfig string
	// Client-side rate limit of registryd's API client (client-go's
	// default, 5/s with bursts of 10, made every push to a new repository
	// wait; the API server's priority and fairness protects it).
	kubeQPS   float64
	kubeBurst int
	// How coarse recorded pull times are (kubernetes tag store).
	pullRecordInterval time.Duration
	// HTTPS on the registry port when both are set.
	tlsCertFile, tlsKeyFile string
	// Blob GETs redirect to signed URLs valid this long (0: off).
	redirectTTL time.Duration
	// Access rules: the Registry's auth mode.
	authMode, authChallenge, tokenRealm string
	anonymousPull                       bool
	htpasswdFile, htpasswdReadOnlyFile  string
	tokenAudiences                      string
	authCacheTTL, authOutageGrace       time.Duration
	tokenMaxScopes                      int
	loginThrottle                       bool
	// Uploads and garbage collection (docs/gc.md).
	uploadLifetime, gcTouchInterval time.Duration
	// Serve net/http/pprof on --debug-addr.
	pprof bool
	// Pull-through cache of other registries (docs/mirror.md): JSON, or
	// @file.
	mirror string
	// Immutable-tag patterns of the bucket tag store (standalone mode).
	immutableTags []string
	// HTTP server limits and graceful drain (docs/registryd.md, "Limits
	// and timeouts").
	limits serverLimits
}

// serverLimits are the flags that keep slow, idle and numerous clients
// from exhausting registryd, and that pace its shutdown.
type serverLimits struct {
	maxConcurrentRequests int
	bodyTimeout           time.Duration
	bodyMinBytes          int64
	idleTimeout           time.Duration
	readHeaderTimeout     time.Duration
	maxHeaderBytes        int
	shutdownDelay         time.Duration
	shutdownTimeout       time.Duration
}

func bindLimitFlags(fs *flag.FlagSet, l *serverLimits) {
	fs.IntVar(&l.maxConcurrentRequests, "max-concurrent-requests", 1024, "requests served at once; more get 429 TOOMANYREQUESTS with Retry-After (negative: no cap)")
	fs.DurationVar(&l.bodyTimeout, "body-timeout", 30*time.Second, "a request or response body that moves fewer than --body-min-bytes in this much waiting on the client is cut off; no limit on a body's total time (negative: off)")
	fs.Int64Var(&l.bodyMinBytes, "body-min-bytes", 64<<10, "bytes a body must move in each --body-timeout")
	fs.DurationVar(&l.idleTimeout, "idle-timeout", 30*time.Second, "close a keep-alive connection idle this long")
	fs.DurationVar(&l.readHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client has to send a request's headers")
	fs.IntVar(&l.maxHeaderBytes, "max-header-bytes", 1<<20, "largest request header block")
	fs.DurationVar(&l.shutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, fail /readyz and keep serving this long, so endpoints are removed before listeners close")
	fs.DurationVar(&l.shutdownTimeout, "shutdown-timeout", 25*time.Second, "then wait this long for in-flight requests before exiting (terminationGracePeriodSeconds must cover delay + timeout)")
}

// bindFlags defines registryd's flags on fs; the operator's Deployment args
// are parsed with it in a test, so the two cannot drift apart.
func bindFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:5000", "address to serve the registry API on")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "address for /healthz, /readyz and /metrics (empty: disabled)")
	fs.StringVar(&c.storageURL, "storage", "file:///var/tmp/stevedore", "gocloud.dev/blob bucket URL (file:///dir, mem://, s3://…)")
	fs.StringVar(&c.storagePrefix, "storage-prefix", "", "key prefix inside the bucket, so several registries can share one")
	fs.StringVar(&c.secretFile, "http-secret-file", "", "file holding the secret that signs upload state (default: $STEVEDORE_HTTP_SECRET, else random)")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.Int64Var(&c.maxManifestBytes, "max-manifest-bytes", 4<<20, "largest manifest accepted")
	fs.Int64Var(&c.chunkMinLength, "chunk-min-length", 0, "OCI-Chunk-Min-Length announced to clients (0: none)")
	fs.StringVar(&c.registry, "registry", "", "name of the Registry served: tags then live in its Repositories' status (empty: in the bucket)")
	fs.StringVar(&c.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Registry (default: $POD_NAMESPACE)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig for --registry (default: $KUBECONFIG, else in-cluster)")
	fs.Float64Var(&c.kubeQPS, "kube-api-qps", defaultKubeQPS, "requests per second registryd's API client may send on average")
	fs.IntVar(&c.kubeBurst, "kube-api-burst", defaultKubeBurst, "requests registryd's API client may send at once above --kube-api-qps")
	fs.DurationVar(&c.pullRecordInterval, "pull-record-interval", defaultPullRecordInterval, "with --registry: a tag's recorded pull time (status pulledAt) moves at most once this long, and pulls are written once this long, batched")
	fs.StringVar(&c.tlsCertFile, "tls-cert-file", "", "serve HTTPS with this certificate (PEM), with --tls-key-file")
	fs.StringVar(&c.tlsKeyFile, "tls-key-file", "", "private key (PEM) of --tls-cert-file")
	fs.StringVar(&c.authMode, "auth", "none", "auth mode: none (everyone may push: development only), htpasswd or kubernetes")
	fs.BoolVar(&c.anonymousPull, "anonymous-pull", false, "serve pulls (GET, HEAD) without credentials in any auth mode")
	fs.BoolVar(&c.pprof, "pprof", false, "also serve /debug/pprof/ on --debug-addr (profiles reveal request data: keep that port private)")
	fs.StringVar(&c.authChallenge, "auth-challenge", "basic", "401 challenge: basic (user and password on each request) or bearer (Docker token flow via /token)")
	fs.StringVar(&c.tokenRealm, "token-realm", "", "URL of /token in bearer challenges (default: /token on the host the client used)")
	fs.StringVar(&c.htpasswdFile, "htpasswd-file", "", "auth htpasswd: file of user:bcrypt-hash lines, re-read when it changes")
	fs.StringVar(&c.htpasswdReadOnlyFile, "htpasswd-readonly-file", "", "auth htpasswd: file of users (one per line) who may only pull")
	fs.StringVar(&c.tokenAudiences, "token-audiences", "", "auth kubernetes: comma-separated audiences tokens must be for (default: stevedore.dev/registry/NAMESPACE/REGISTRY)")
	fs.DurationVar(&c.authCacheTTL, "auth-cache-ttl", 10*time.Second, "auth kubernetes: how long TokenReview and SubjectAccessReview answers are reused")
	fs.DurationVar(&c.authOutageGrace, "auth-outage-grace", 5*time.Minute, "auth kubernetes: while the API server cannot answer, tokens and pull decisions confirmed this recently keep pulling (0: off)")
	fs.IntVar(&c.tokenMaxScopes, "token-max-scopes", 16, "most accesses one /token request may ask for")
	fs.BoolVar(&c.loginThrottle, "login-throttle", true, "answer 429 to clients after repeated failed logins, without checking their credentials")
	fs.DurationVar(&c.redirectTTL, "redirect-ttl", 0, "answer blob GETs with a redirect to a URL signed for this long, where the storage can sign (0: serve the bytes)")
	fs.DurationVar(&c.uploadLifetime, "upload-lifetime", 24*time.Hour, "refuse to resume uploads started longer ago (BLOB_UPLOAD_UNKNOWN); registryd gc deletes them after this plus its grace")
	fs.DurationVar(&c.gcTouchInterval, "gc-touch-interval", time.Minute, "a blob HEAD rewrites a repository link older than this, so garbage collection's grace runs from the HEAD (negative: every HEAD)")
	fs.StringVar(&c.mirror, "mirror", "", "pull-through cache of other registries: JSON ({\"tagTTL\":\"5m\",\"offline\":true,\"upstreams\":[{\"host\":\"docker.io\"}]}) or @file holding it; see docs/mirror.md (empty: none)")
	fs.Func("immutable-tags", "standalone mode: a tag matching this regular expression (RE2, matching the whole tag) cannot be moved or deleted once pushed; repeatable; every replica needs the same list (with --registry: the Registry's and Repositories' spec.immutableTags instead)", func(p string) error {
		if _, err := tags.CompileImmutable(p); err != nil {
			return err
		}
		c.immutableTags = append(c.immutableTags, p)
		return nil
	})
	bindLimitFlags(fs, &c.limits)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "scrub" {
		os.Exit(runScrub(os.Args[2:], os.Stdout))
	}
	if len(os.Args) > 1 && os.Args[1] == "gc" {
		os.Exit(runGC(os.Args[2:], os.Stdout))
	}
	var c config
	bindFlags(flag.CommandLine, &c)
	flag.Parse()
	log := newLogger(c.logFormat)
	log.Info("registryd starting", "version", version.Version)
	softMemoryLimit(log, "/sys/fs/cgroup")
	if err := run(log, c); err != nil {
		log.Error("registryd failed", "error", err)
		os.Exit(1)
	}
}

func newLogger(format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func run(log *slog.Logger, c config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	secret, err := loadSecret(log, c.secretFile)
	if err != nil {
		return err
	}
	b, err := bucket.Open(ctx, fileDefaults(c.storageURL), bucket.Options{Prefix: c.storagePrefix})
	if err != nil {
		return err
	}
	defer b.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kc, err := connectKube(c, reg)
	if err != nil {
		return err
	}
	tagStore, err := newTagStore(ctx, log, c, b, reg, kc)
	if err != nil {
		return err
	}
	guard, err := newGuard(log, c, secret, reg, kc)
	if err != nil {
		return err
	}
	mirrors, err := newMirror(log, c, b, tagStore)
	if err != nil {
		return err
	}
	handler := withTokenEndpoint(server.New(b, tagStore, &server.Options{
		MaxManifestBytes: c.maxManifestBytes, Secret: secret, ChunkMinLength: c.chunkMinLength,
		RedirectTTL: c.redirectTTL, BeforeSign: bucket.BeforeSign(c.storageURL, nil), ListStart: bucket.ListStart, Logger: log, Registerer: reg, Authorizer: guard,
		MaxConcurrentRequests: c.limits.maxConcurrentRequests, BodyTimeout: c.limits.bodyTimeout, BodyMinBytes: c.limits.bodyMinBytes,
		UploadLifetime: c.uploadLifetime, GCTouchInterval: c.gcTouchInterval, Mirror: mirrors,
	}), guard.TokenHandler())
	if (c.tlsCertFile == "") != (c.tlsKeyFile == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together")
	}
	api := &http.Server{Addr: c.addr, Handler: handler, ReadHeaderTimeout: c.limits.readHeaderTimeout,
		IdleTimeout: c.limits.idleTimeout, MaxHeaderBytes: c.limits.maxHeaderBytes, ConnContext: server.ConnContext}
	if c.limits.bodyTimeout > 0 {
		// Absolute deadlines for what the registry handler does not pace
		// itself (/token): the handler replaces them with progress
		// deadlines on every /v2/ request.
		api.ReadTimeout, api.WriteTimeout = c.limits.bodyTimeout, c.limits.bodyTimeout
	}
	if c.tlsCertFile != "" {
		certs, err := newCertReloader(c.tlsCertFile, c.tlsKeyFile, 10*time.Second)
		if err != nil {
			return err
		}
		api.TLSConfig = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	var draining atomic.Bool
	var debug *http.Server
	if c.debugAddr != "" {
		debug = &http.Server{Addr: c.debugAddr, Handler: debugMux(b, reg, c.pprof, &draining, tagStoreReady(tagStore)), ReadHeaderTimeout: 10 * time.Second}
	}
	return serve(ctx, log, api, debug, drainOptions{draining: &draining, delay: c.limits.shutdownDelay, timeout: c.limits.shutdownTimeout})
}

// fileDefaults turns off fileblob's attribute sidecars on a file:// URL
// that does not choose: fileblob would otherwise hash every byte written
// with MD5 and write a JSON file beside each object, and read that JSON
// back on every open, for attributes registryd never reads (content
// types live in manifest links). Sidecars already on disk stay harmless:
// listings skip them and deletes remove them.
func fileDefaults(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "file" || u.Query().Has("metadata") {
		return rawURL
	}
	q := u.Query()
	q.Set("metadata", "skip")
	u.RawQuery = q.Encode()
	return u.String()
}

// drainOptions pace the shutdown on SIGTERM.
type drainOptions struct {
	draining       *atomic.Bool // read by /readyz
	delay, timeout time.Duration
}

// serve runs the API server (and the debug one, when not nil) until ctx ends
// or one fails. Then it drains: /readyz fails at once while the API keeps
// serving for the delay, so Kubernetes removes the pod's endpoints before
// its listeners close; then it stops accepting and waits up to the
// timeout for requests in flight (a push of a large layer) to finish.
func serve(ctx context.Context, log *slog.Logger, api, debug *http.Server, d drainOptions) error {
	servers := []*http.Server{api}
	if debug != nil {
		servers = append(servers, debug)
	}
	// Every listener is bound before any serves: the kernel queues
	// connections from the moment of listen(2), so a client that got an
	// answer from the API may at once reach the debug address too.
	listeners := make([]net.Listener, 0, len(servers))
	for _, srv := range servers {
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return err
		}
		if srv.TLSConfig != nil {
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
		listeners = append(listeners, ln)
	}
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		ln := listeners[i]
		log.Info("listening", "addr", ln.Addr().String(), "tls", srv.TLSConfig != nil)
		go func() { errc <- srv.Serve(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
		d.draining.Store(true)
		log.Info("draining: /readyz fails, still serving", "shutdown_delay", d.delay, "shutdown_timeout", d.timeout)
		// Answers from here on close their connection, so clients
		// reconnect, through the Service, to a pod that stays.
		api.SetKeepAlivesEnabled(false)
		select {
		case <-time.After(d.delay):
		case err = <-errc:
		}
	case err = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	start := time.Now()
	if serr := api.Shutdown(shutdownCtx); serr != nil {
		log.Warn("requests still in flight at --shutdown-timeout: cutting them off", "error", serr)
		_ = api.Close()
	} else {
		log.Info("in-flight requests finished", "after", time.Since(start))
	}
	if debug != nil {
		_ = debug.Close()
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// debugMux serves /healthz, /readyz and /metrics. /readyz fails while
// draining, and while tagsReady (nil: always ready), the tag store's own
// readiness, reports an error.
func debugMux(b *blob.Bucket, reg *prometheus.Registry, withPprof bool, draining *atomic.Bool, tagsReady func() error) http.Handler {
	store := storage.New(b)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if tagsReady != nil {
			if err := tagsReady(); err != nil {
				http.Error(w, "tags: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := store.Ping(ctx); err != nil {
			http.Error(w, "storage: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// loadSecret reads the upload-token secret. Without one, uploads only work
// against this process, so say so loudly.
func loadSecret(log *slog.Logger, file string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading --http-secret-file: %w", err)
		}
		if s := strings.TrimSpace(string(b)); s != "" {
			return []byte(s), nil
		}
		return nil, fmt.Errorf("--http-secret-file %s is empty", file)
	}
	if s := os.Getenv("STEVEDORE_HTTP_SECRET"); s != "" {
		return []byte(s), nil
	}
	log.Warn("no --http-secret-file or STEVEDORE_HTTP_SECRET: using a random secret; uploads cannot move between replicas")
	secret := make([]byte, 32)
	_, err := rand.Read(secret)
	return secret, err
}
