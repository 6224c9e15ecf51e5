package main

import (
	"context"
	"log/slog"

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

// kubeClient is the API server of --kubeconfig (see kubeConfig).
func kubeClient(path string) (*rest.Config, *kubernetes.Clientset, error) {
	cfg, err := kubeConfig(path)
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	return cfg, cs, err
}

// kubeConfig is --kubeconfig when given, else $KUBECONFIG, else the pod's
// in-cluster configuration.
func kubeConfig(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}
