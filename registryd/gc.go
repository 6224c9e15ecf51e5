package main

import (
	"context"
	"encoding/json"
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
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/gcreport"
	"github.com/stevedore-dev/stevedore/registryd/gc"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

// defaultGCPace: one sequential client's worth of requests. Back to back
// on make bench-gc (3 rounds each, 2026-12-02): at 1 the sweep took
// 47-54 s with the clients keeping 83-93 % of their rates; at 0.8,
// 59-63 s and 78-94 % (docs/gc.md, Pacing).
const defaultGCPace = 1.0

// gcConfig is the flags of `registryd gc`.
type gcConfig struct {
	storageURL, prefix            string
	grace, uploadLifetime, ttl    time.Duration
	untaggedDelay                 time.Duration
	dryRun, deleteUntagged, list  bool
	batch, workers                int
	pace                          float64
	registry, namespace, kubeconf string
	logFormat, reportFile         string
}

func bindGCFlags(fs *flag.FlagSet, c *gcConfig) {
	fs.StringVar(&c.storageURL, "storage", "", "gocloud.dev/blob bucket URL to collect")
	fs.StringVar(&c.prefix, "storage-prefix", "", "key prefix inside the bucket")
	fs.DurationVar(&c.grace, "grace", 15*time.Minute, "never delete what was written or vouched for more recently than this (0: no grace, tests only)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "list what a run would delete, delete nothing")
	fs.BoolVar(&c.deleteUntagged, "delete-untagged", false, "also delete manifests no tag, index or subject keeps (past the grace)")
	fs.DurationVar(&c.untaggedDelay, "untagged-delay", 0, "with --delete-untagged: keep an untagged manifest this long after it was last pushed (below --grace, the grace decides)")
	fs.DurationVar(&c.uploadLifetime, "upload-lifetime", uploads.DefaultLifetime, "delete uploads started longer ago (plus the grace); registryd's --upload-lifetime must match")
	fs.DurationVar(&c.ttl, "intent-ttl", 2*time.Minute, "longest a batch of deletes may take; pushes of that content wait at most this long")
	fs.IntVar(&c.batch, "batch-size", 10000, "digests per batch of deletes")
	fs.IntVar(&c.workers, "workers", 16, "storage requests sent in parallel")
	fs.Float64Var(&c.pace, "pace", defaultGCPace, "share of the run's time its storage requests may take, summed over the workers (1: one request in flight on average, as one sequential client; 0.5: half of one), leaving the backend and the machine to registryd's clients; 0: as fast as --workers allow")
	fs.BoolVar(&c.list, "list", false, "print every key deleted (always on with --dry-run)")
	fs.StringVar(&c.registry, "registry", "", "name of the Registry whose Repository status holds tags (kubernetes tag mode)")
	fs.StringVar(&c.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of --registry (default: $POD_NAMESPACE)")
	fs.StringVar(&c.kubeconf, "kubeconfig", "", "kubeconfig for --registry (default: $KUBECONFIG, else in-cluster)")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.reportFile, "report-file", "", "write the run's counts as JSON here (the operator passes /dev/termination-log and reads them into status.gc)")
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
	if c.reportFile != "" {
		if werr := os.WriteFile(c.reportFile, report(rep, err).Marshal(), 0o644); werr != nil {
			log.Warn("writing the report", "file", c.reportFile, "error", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "registryd gc:", err)
		return 1
	}
	return 0
}

// report is the run's outcome as the operator reads it.
func report(rep gc.Report, err error) gcreport.Report {
	r := gcreport.Report{DryRun: rep.DryRun, DeletedObjects: int64(len(rep.Deleted)), Manifests: int64(rep.Manifests),
		Blobs: int64(rep.Blobs), ReclaimedBytes: rep.Bytes, StoredBlobs: int64(rep.StoredBlobs), StoredBytes: rep.StoredBytes, Message: rep.Summary()}
	if err != nil {
		r.Failed, r.Message = true, err.Error()+"; "+r.Message
	}
	return r
}

func collect(ctx context.Context, log *slog.Logger, c gcConfig) (rep gc.Report, err error) {
	b, err := bucket.Open(ctx, fileDefaults(c.storageURL), bucket.Options{Prefix: c.prefix})
	if err != nil {
		return gc.Report{}, err
	}
	defer b.Close()
	opts := gc.Options{Grace: c.grace, NoGrace: c.grace <= 0, DeleteUntagged: c.deleteUntagged, UntaggedDelay: c.untaggedDelay, UploadLifetime: c.uploadLifetime,
		DryRun: c.dryRun, Pace: c.pace, BatchSize: c.batch, IntentTTL: c.ttl, Workers: c.workers, Logger: log}
	if c.registry != "" {
		kc, err := connectKube(config{registry: c.registry, namespace: c.namespace, kubeconfig: c.kubeconf}, prometheus.NewRegistry())
		if err != nil {
			return gc.Report{}, err
		}
		defer func() { recordRun(context.WithoutCancel(ctx), log, kc, c, rep, err) }()
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

// Event reasons of a collection, on the Registry.
const (
	reasonCollected        = "GarbageCollected"
	reasonCollectionFailed = "GarbageCollectionFailed"
)

// recordRun records the run's summary as an Event on the Registry, where
// `kubectl describe registry` shows it. Best effort: the Job's log has it too.
func recordRun(ctx context.Context, log *slog.Logger, kc *kubeConn, c gcConfig, rep gc.Report, runErr error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reg, err := kc.cs.RESTClient().Get().AbsPath("/apis", v1.GroupVersion.Group, v1.GroupVersion.Version,
		"namespaces", c.namespace, "registries", c.registry).DoRaw(ctx)
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err == nil {
		err = json.Unmarshal(reg, &meta)
	}
	if err != nil {
		log.Warn("reading the Registry to record the collection", "error", err)
		return
	}
	typ, reason, note := corev1.EventTypeNormal, reasonCollected, rep.Summary()
	if runErr != nil {
		typ, reason, note = corev1.EventTypeWarning, reasonCollectionFailed, runErr.Error()+"; "+note
	}
	if len(note) > 1024 {
		note = note[:1024]
	}
	now := metav1.NowMicro()
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: c.registry + "-gc-", Namespace: c.namespace},
		EventTime:           now,
		ReportingController: "stevedore.dev/registryd-gc",
		ReportingInstance:   "registryd-gc",
		Action:              "Collect",
		Reason:              reason,
		Type:                typ,
		Note:                note,
		Regarding: corev1.ObjectReference{APIVersion: v1.GroupVersion.String(), Kind: "Registry",
			Namespace: c.namespace, Name: c.registry, UID: meta.Metadata.UID},
	}
	if _, err := kc.cs.EventsV1().Events(c.namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.Warn("recording the collection as an Event", "error", err)
	}
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
