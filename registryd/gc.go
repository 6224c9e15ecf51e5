package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/gc"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

// gcConfig is the flags of `registryd gc`.
type gcConfig struct {
	storageURL, prefix            string
	grace, uploadLifetime, ttl    time.Duration
	dryRun, deleteUntagged, list  bool
	batch, workers                int
	registry, namespace, kubeconf string
	logFormat                     string
}

func bindGCFlags(fs *flag.FlagSet, c *gcConfig) {
	fs.StringVar(&c.storageURL, "storage", "", "gocloud.dev/blob bucket URL to collect")
	fs.StringVar(&c.prefix, "storage-prefix", "", "key prefix inside the bucket")
	fs.DurationVar(&c.grace, "grace", 15*time.Minute, "never delete what was written or vouched for more recently than this (0: no grace, tests only)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "list what a run would delete, delete nothing")
	fs.BoolVar(&c.deleteUntagged, "delete-untagged", false, "also delete manifests no tag, index or subject keeps (past the grace)")
	fs.DurationVar(&c.uploadLifetime, "upload-lifetime", uploads.DefaultLifetime, "delete uploads started longer ago (plus the grace); registryd's --upload-lifetime must match")
	fs.DurationVar(&c.ttl, "intent-ttl", 2*time.Minute, "longest a batch of deletes may take; pushes of that content wait at most this long")
	fs.IntVar(&c.batch, "batch-size", 1000, "digests per batch of deletes")
	fs.IntVar(&c.workers, "workers", 16, "storage requests sent in parallel")
	fs.BoolVar(&c.list, "list", false, "print every key deleted (always on with --dry-run)")
	fs.StringVar(&c.registry, "registry", "", "name of the Registry whose Repository status holds tags (kubernetes tag mode)")
	fs.StringVar(&c.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of --registry (default: $POD_NAMESPACE)")
	fs.StringVar(&c.kubeconf, "kubeconfig", "", "kubeconfig for --registry (default: $KUBECONFIG, else in-cluster)")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
}

// runGC is `registryd gc`: one collection of the bucket (docs/gc.md),
// while registryd replicas keep serving it. It prints the keys it deletes
// (with --list or --dry-run) and one summary line, and exits 1 on failure.
// Credentials come from the environment, as for serving: in a cluster it
// runs with registryd's ServiceAccount and storage Secret.
func runGC(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	var c gcConfig
	bindGCFlags(fs, &c)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if c.storageURL == "" {
		fmt.Fprintln(os.Stderr, "registryd gc: --storage is required")
		return 2
	}
	log := newLogger(c.logFormat)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := collect(ctx, log, c)
	if c.list || c.dryRun {
		verb := "deleted"
		if c.dryRun {
			verb = "would delete"
		}
		for _, k := range rep.Deleted {
			fmt.Fprintln(stdout, verb, k)
		}
	}
	fmt.Fprintln(stdout, rep.Summary())
	if err != nil {
		fmt.Fprintln(os.Stderr, "registryd gc:", err)
		return 1
	}
	return 0
}

func collect(ctx context.Context, log *slog.Logger, c gcConfig) (gc.Report, error) {
	b, err := bucket.Open(ctx, fileDefaults(c.storageURL), bucket.Options{Prefix: c.prefix})
	if err != nil {
		return gc.Report{}, err
	}
	defer b.Close()
	opts := gc.Options{Grace: c.grace, NoGrace: c.grace <= 0, DeleteUntagged: c.deleteUntagged, UploadLifetime: c.uploadLifetime,
		DryRun: c.dryRun, BatchSize: c.batch, IntentTTL: c.ttl, Workers: c.workers, Logger: log}
	if c.registry != "" {
		kc, err := connectKube(config{registry: c.registry, namespace: c.namespace, kubeconfig: c.kubeconf}, prometheus.NewRegistry())
		if err != nil {
			return gc.Report{}, err
		}
		store, err := kube.New(ctx, kc.cfg, kube.Options{Namespace: c.namespace, Registry: c.registry, Journal: tags.NewBucket(b), Logger: log})
		if err != nil {
			return gc.Report{}, err
		}
		if err := waitReady(ctx, store); err != nil {
			return gc.Report{}, err
		}
		opts.Tags = kubeTags{store}
	}
	return gc.Run(ctx, b, opts)
}

// waitReady waits for the kubernetes tag store's cache: marking on an
// empty cache would take every tag for absent.
func waitReady(ctx context.Context, s *kube.Store) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for s.Ready() != nil {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Repository cache did not sync: %w", errors.Join(s.Ready(), ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// kubeTags reads every tag of every Repository of the Registry.
type kubeTags struct{ s *kube.Store }

func (k kubeTags) TagDigests(ctx context.Context) (map[string][]digest.Digest, error) {
	repos, err := k.s.Repositories(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]digest.Digest{}
	for _, repo := range repos {
		list, err := k.s.List(ctx, repo, 0, "")
		if err != nil {
			return nil, err
		}
		for _, t := range list {
			desc, err := k.s.Get(ctx, repo, t)
			if errors.Is(err, tags.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out[repo] = append(out[repo], desc.Digest)
		}
	}
	return out, nil
}
