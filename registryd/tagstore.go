package main

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// newTagStore picks the tag store: Repository status when registryd serves a
// Registry (--registry), with the bucket journal beneath it; else the bucket.
func newTagStore(ctx context.Context, log *slog.Logger, c config, b *blob.Bucket, reg prometheus.Registerer) (tags.Store, error) {
	journal := tags.NewBucket(b)
	if c.registry == "" {
		log.Info("tags live in the bucket (standalone mode)")
		return journal, nil
	}
	cfg, cs, err := kubeClient(c.kubeconfig)
	if err != nil {
		return nil, err
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, err
	}
	scheme, err := kube.Scheme()
	if err != nil {
		return nil, err
	}
	store, err := kube.New(ctx, cfg, kube.Options{
		Namespace: c.namespace, Registry: c.registry, Journal: journal,
		Events: broadcaster.NewRecorder(scheme, "registryd"), Metrics: reg, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("tags live in Repository status", "registry", c.registry, "namespace", c.namespace)
	return store, nil
}

// apiRequests counts every request registryd makes to the API server (tag
// store and auth alike), by method and resource: the pull path must make
// none (tags are served from the informer cache, auth answers are cached),
// and make bench asserts it from this counter. The resource label tells
// those apart from the Events of earlier pushes, which client-go sends in
// the background. run registers it.
var apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "stevedore_kube_api_requests_total",
	Help: "Requests registryd sent to the Kubernetes API server (a watch counts once, when it starts).",
}, []string{"method", "resource"})

// kubeClient is the API server of --kubeconfig (see kubeConfig), with every
// request counted in apiRequests.
func kubeClient(path string) (*rest.Config, *kubernetes.Clientset, error) {
	cfg, err := kubeConfig(path)
	if err != nil {
		return nil, nil, err
	}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			apiRequests.WithLabelValues(r.Method, apiResource(r.URL.Path)).Inc()
			return rt.RoundTrip(r)
		})
	})
	cs, err := kubernetes.NewForConfig(cfg)
	return cfg, cs, err
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

// kubeConfig is --kubeconfig when given, else $KUBECONFIG, else the pod's
// in-cluster configuration.
func kubeConfig(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}
