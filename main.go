// Command manager is the Stevedore operator: it reconciles Registry and
// Repository resources into running registryd Deployments.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	stevedorev1alpha1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/metricsauth"
	"github.com/stevedore-dev/stevedore/internal/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "delete-registries" {
		os.Exit(deleteRegistries(os.Args[2:]))
	}
	var (
		metrics        metricsFlags
		probeAddr      string
		leaderElect    bool
		leaderElectNS  string
		registrydImage string
		allowedNets    string
		retentionEvery time.Duration
	)
	flag.StringVar(&metrics.addr, "metrics-bind-address", ":8443", "Address the metrics endpoint binds to; 0 disables it.")
	flag.BoolVar(&metrics.secure, "metrics-secure", true,
		"Serve metrics over HTTPS to callers with a token allowed `get` on the non-resource URL /metrics; false: plain HTTP to anyone.")
	flag.StringVar(&metrics.certDir, "metrics-cert-dir", "",
		"Directory holding tls.crt and tls.key for the metrics endpoint, re-read when they change; empty: a self-signed certificate made at start.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the health probe endpoint binds to.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader so only one operator replica reconciles at a time.")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the leader-election Lease; in a pod, its own namespace.")
	flag.StringVar(&registrydImage, "registryd-image", defaultImage(), "Image of registryd when a Registry does not name one; defaults to the operator's own.")
	flag.StringVar(&allowedNets, "storage-allowed-networks", "",
		"Comma-separated CIDRs a Registry's storage endpoint may reach although refused by default (loopback, link-local: cloud metadata).")
	flag.DurationVar(&retentionEvery, "retention-interval", time.Hour, "How often retention runs on each Repository with a policy; a spec change runs it at once.")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(stevedorev1alpha1.AddToScheme(scheme))

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme,
		Cache:                   controllers.CacheOptions(),
		Client:                  controllers.ClientOptions(),
		Metrics:                 metrics.options(),
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "stevedore-operator.stevedore.dev",
		LeaderElectionNamespace: leaderElectNS,
		// Hand the Lease over on shutdown, so the replacement pod does not
		// wait out the lease duration (15s) on every rollout. Safe: main
		// returns right after the manager stops.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "unable to create manager")
		os.Exit(1)
	}
	nets, err := parseNetworks(allowedNets)
	if err != nil {
		log.Error(err, "invalid --storage-allowed-networks")
		os.Exit(1)
	}
	if err := controllers.SetupWithManager(mgr, controllers.Options{RegistrydImage: registrydImage, StorageAllowedNetworks: nets, RetentionInterval: retentionEvery, Metrics: crmetrics.Registry}); err != nil {
		log.Error(err, "unable to set up controllers")
		os.Exit(1)
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))

	log.Info("starting manager", "version", version.Version)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

// metricsFlags configure the operator's metrics endpoint.
type metricsFlags struct {
	addr    string
	secure  bool
	certDir string
}

// options serve the metrics as the Kubernetes components serve theirs:
// HTTPS, each request's bearer token checked with a TokenReview and `get` on
// its path with a SubjectAccessReview (the operator's ClusterRole may create
// both; internal/metricsauth says why not controller-runtime's filter).
func (f metricsFlags) options() metricsserver.Options {
	o := metricsserver.Options{BindAddress: f.addr, SecureServing: f.secure}
	if !f.secure {
		return o
	}
	o.FilterProvider = metricsauth.FilterProvider(metricsauth.Options{})
	o.CertDir = f.certDir
	o.TLSOpts = []func(*tls.Config){func(c *tls.Config) {
		// HTTP/1.1 only: HTTP/2's stream resets (CVE-2023-44487, CVE-2023-39325)
		// are not worth having for one scrape a minute.
		c.NextProtos = []string{"http/1.1"}
	}}
	return o
}

// defaultImage is the operator's own image when the chart or Deployment tells
// it (STEVEDORE_IMAGE from the downward API), else the release image.
func defaultImage() string {
	if img := os.Getenv("STEVEDORE_IMAGE"); img != "" {
		return img
	}
	return "ghcr.io/stevedore-dev/stevedore:" + version.Version
}

// parseNetworks reads a comma-separated list of CIDRs.
func parseNetworks(list string) ([]netip.Prefix, error) {
	var nets []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		nets = append(nets, p)
	}
	return nets, nil
}

// deleteRegistries is `manager delete-registries`, the chart's pre-delete
// hook: it deletes the chart's Registries and waits until the operator has
// finished with them, before helm removes the operator.
func deleteRegistries(args []string) int {
	fs := flag.NewFlagSet("delete-registries", flag.ContinueOnError)
	ns := fs.String("namespace", os.Getenv("POD_NAMESPACE"), "Namespace of the Registries.")
	selector := fs.String("selector", "", "Label selector of the Registries (empty: every Registry in the namespace).")
	timeout := fs.Duration("timeout", 5*time.Minute, "How long to wait for them to go.")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sel, err := labels.Parse(*selector)
	if err != nil {
		fmt.Fprintln(os.Stderr, "invalid --selector:", err)
		return 2
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(stevedorev1alpha1.AddToScheme(scheme))
	cfg, err := ctrl.GetConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := controllers.DeleteRegistries(ctx, c, controllers.DeleteRegistriesOptions{Namespace: *ns, Selector: sel}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("deleted the Registries of %s matching %q\n", *ns, *selector)
	return 0
}
