package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// newTagStore picks the tag store: Repository status when registryd serves a
// Registry (--registry), with the bucket journal beneath it; else the bucket.
// kc is nil exactly when there is no --registry.
func newTagStore(ctx context.Context, log *slog.Logger, c config, b *blob.Bucket, reg prometheus.Registerer, kc *kubeConn) (tags.Store, error) {
	if kc == nil {
		rules, err := tags.MustRules("flag --immutable-tags", c.immutableTags)
		if err != nil {
			return nil, err
		}
		log.Info("tags live in the bucket (standalone mode)", "immutableTags", c.immutableTags)
		return tags.NewBucketWith(b, tags.BucketOptions{ImmutableTags: rules, ListStart: bucket.ListStart}), nil
	}
	if len(c.immutableTags) > 0 {
		// One source of rules: the objects, which change without a restart.
		return nil, errors.New("--immutable-tags is for standalone mode; with --registry, set spec.immutableTags on the Registry or its Repositories")
	}
	journal := tags.NewBucketWith(b, tags.BucketOptions{ListStart: bucket.ListStart})
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: kc.cs.EventsV1()})
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, err
	}
	scheme, err := kube.Scheme()
	if err != nil {
		return nil, err
	}
	store, err := kube.New(ctx, kc.cfg, kube.Options{
		Namespace: c.namespace, Registry: c.registry, Journal: journal,
		Events: broadcaster.NewRecorder(scheme, "registryd"), Metrics: reg, Logger: log,
		PullRecordInterval: c.pullRecordInterval,
	})
	if err != nil {
		return nil, err
	}
	// Not waiting for the API server: /readyz says when the store serves.
	log.Info("tags live in Repository status", "registry", c.registry, "namespace", c.namespace)
	return store, nil
}

// tagStoreReady is the readiness of a tag store that has one (the
// kubernetes store is not ready until its cache has synced), else nil.
func tagStoreReady(s tags.Store) func() error {
	if r, ok := s.(interface{ Ready() error }); ok {
		return r.Ready
	}
	return nil
}

// kubeConn is registryd's one connection to the API server, shared by the
// kubernetes tag store and kubernetes auth.
type kubeConn struct {
	cfg *rest.Config
	cs  *kubernetes.Clientset
}

// connectKube connects to the API server of --kubeconfig (see kubeConfig)
// when registryd serves a Registry (--registry); nil, nil otherwise. Every
// request it sends is counted in stevedore_kube_api_requests_total, by
// method and resource: the pull path must send none (tags come from the
// informer cache, auth answers are cached), and make bench asserts it. The
// resource label tells those apart from the Events of earlier pushes, which
// client-go sends in the background.
func connectKube(c config, reg prometheus.Registerer) (*kubeConn, error) {
	if c.registry == "" {
		return nil, nil
	}
	cfg, err := kubeConfig(c.kubeconfig, c.kubeQPS, c.kubeBurst)
	if err != nil {
		return nil, err
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stevedore_kube_api_requests_total",
		Help: "Requests registryd sent to the Kubernetes API server (a watch counts once, when it starts).",
	}, []string{"method", "resource"})
	if err := reg.Register(requests); err != nil {
		return nil, err
	}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			requests.WithLabelValues(r.Method, apiResource(r.URL.Path)).Inc()
			return rt.RoundTrip(r)
		})
	})
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kubeConn{cfg: cfg, cs: cs}, nil
}

// apiResource is the resource an API path names: repositories in
// /apis/stevedore.dev/v1alpha1/namespaces/ns/repositories/x/status.
func apiResource(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			return parts[i+2]
		}
	}
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		return parts[2]
	case len(parts) >= 4 && parts[0] == "apis":
		return parts[3]
	}
	return "other"
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The API client's rate limit unless flags say otherwise (kube.DefaultQPS),
// and how coarse pull times are.
const (
	defaultKubeQPS            = kube.DefaultQPS
	defaultKubeBurst          = kube.DefaultBurst
	defaultPullRecordInterval = kube.DefaultPullRecordInterval
)

// kubeConfig is --kubeconfig when given, else $KUBECONFIG, else the pod's
// in-cluster configuration, rate-limited to qps and burst (defaults when
// zero).
func kubeConfig(path string, qps float64, burst int) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
	if cfg.QPS <= 0 {
		cfg.QPS = defaultKubeQPS
	}
	if cfg.Burst <= 0 {
		cfg.Burst = defaultKubeBurst
	}
	return cfg, nil
}
