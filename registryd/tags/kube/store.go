// Package kube is the kubernetes tag store: tags live in the status of the
// Repository objects of one Registry. Reads come from an informer cache of
// that Registry's Repositories (no API call on the pull path); writes update
// status with optimistic concurrency, never decided on the cache's word, and
// the bucket journal mirrors what status committed.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// The API client's rate limit registryd gives the store unless its flags
// say otherwise. A push into a new repository costs two requests on it (a
// create, a status update; the read-back of the journal goes through the
// metadata client, Events through their own), so 150/s lets one replica
// create 75 repositories a second. Measured (BenchmarkNewRepositories, 8
// pushers, envtest): the limit was the bound at 50/s (26 repositories/s)
// and 100/s; with none the API server took 214/s. The API server still
// protects itself (priority and fairness answers 429, which client-go
// retries).
const (
	DefaultQPS   = 150
	DefaultBurst = 300
)

// indexPath indexes the cached Repositories by their OCI path.
const indexPath = "spec.name"

// Options configure a Store.
type Options struct {
	// Namespace and Registry name the Registry whose tags this store keeps.
	Namespace, Registry string
	// Journal mirrors every tag write once status has committed it (the
	// bucket tag store), so a lost cluster's tags come back from the bucket.
	Journal tags.Store
	// Events records an Event on the Repository for each tag write; optional.
	Events EventRecorder
	// Metrics registers the store's counters; optional.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// PullRecordInterval is how coarse recorded pull times are (a tag's
	// pulledAt moves at most once an interval; pulls are written once an
	// interval); 0: DefaultPullRecordInterval.
	PullRecordInterval time.Duration
	// PullLogLimit bounds the tags whose pulls are remembered between two
	// flushes; 0: DefaultPullLogLimit.
	PullLogLimit int
	// MaxTagsPerObject is how many tags one object holds before they are
	// split; 0: v1.MaxTagsPerObject (tests set fewer to split sooner).
	MaxTagsPerObject int
}

// EventRecorder is the part of client-go's events.EventRecorder the store uses.
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Store implements tags.Store on Repository status.
type Store struct {
	opts      Options
	client    client.Client // live reads and all writes
	cache     cache.Cache   // this Registry's Repositories and the Registry itself
	liveReads prometheus.Counter
	// journalMisses: cache misses the journal answered (no such tag), with
	// no live read.
	journalMisses prometheus.Counter
	conflicts     prometheus.Counter
	committer     committer
	pullLog       pullLog
	patterns      tags.Patterns // compiled immutable-tag patterns
	catalog       *catalogIndex // the Repositories' paths, sorted
	shards        *shardIndex   // the TagShards by repository UID and prefix

	usage usageQueues // reservations and settles against quotas (usage.go)

	ownMu sync.Mutex
	own   map[string]ownWrite // by path: this replica's last write, until the cache has it
	// ownShards: by shardKey, this replica's last write of a TagShard.
	ownShards map[string]ownShardWrite
	ownReg    ownRegistryWrite // this replica's last write of the Registry (usage)

	synced   atomic.Bool  // the cache has synced once
	notReady atomic.Value // error: why not, while not synced
}

var _ tags.Store = (*Store)(nil)

// Scheme holds the types the store reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, v1.AddToScheme(s)
}

// New builds the store and starts its cache, which runs until ctx ends. It
// does not wait for the API server: registryd starts while the API server is
// away, and the store answers 503 UNAVAILABLE (and Ready reports why) until
// its cache has synced once.
func New(ctx context.Context, cfg *rest.Config, opts Options) (*Store, error) {
	if opts.Namespace == "" || opts.Registry == "" {
		return nil, errors.New("kubernetes tag store: namespace and registry are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	s := &Store{opts: opts, catalog: newCatalogIndex(), shards: newShardIndex(),
		liveReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stevedore_tagstore_live_reads_total",
			Help: "Tag reads that missed the informer cache and asked the API server.",
		}),
		journalMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stevedore_tagstore_journal_misses_total",
			Help: "Tag reads that missed the informer cache and that the bucket's tag journal answered as not found, with no API request.",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stevedore_tagstore_write_conflicts_total",
			Help: "Repository status writes retried after a resourceVersion conflict.",
		}),
	}
	s.notReady.Store(errors.New("kubernetes tag store: waiting for the API server (the Repository cache has not synced yet)"))
	// A fixed mapping of the two kinds: discovery would need the API server
	// before the cache or client could even be built.
	mapper := meta.NewDefaultRESTMapper([]schema.GroupVersion{v1.GroupVersion})
	for _, kind := range []string{"Repository", "RepositoryList", "Registry", "RegistryList", "TagShard", "TagShardList"} {
		mapper.Add(v1.GroupVersion.WithKind(kind), meta.RESTScopeNamespace)
	}
	c, err := cache.New(cfg, cache.Options{
		Scheme:            scheme,
		Mapper:            mapper,
		DefaultNamespaces: map[string]cache.Config{opts.Namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			// Only this Registry's Repositories: spec.registry is a selectable field.
			&v1.Repository{}: {Field: fields.OneTermEqualSelector("spec.registry", opts.Registry)},
			&v1.Registry{}:   {Field: fields.OneTermEqualSelector("metadata.name", opts.Registry)},
			&v1.TagShard{}:   {Field: fields.OneTermEqualSelector("spec.registry", opts.Registry)},
		},
		DefaultWatchErrorHandler: func(_ context.Context, _ *toolscache.Reflector, err error) {
			if !s.synced.Load() {
				s.notReady.Store(fmt.Errorf("kubernetes tag store: waiting for the API server: %w", err))
			}
			opts.Logger.Warn("kubernetes tag store: list/watch failed; retrying", "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("kubernetes tag store cache: %w", err)
	}
	if err := c.IndexField(ctx, &v1.Repository{}, indexPath, func(o client.Object) []string {
		return []string{o.(*v1.Repository).Spec.Name}
	}); err != nil {
		return nil, err
	}
	var catalogSynced, shardsSynced toolscache.ResourceEventHandlerRegistration
	// Registering the informers before Start makes WaitForCacheSync cover
	// them; the catalog's handler is registered before the first list, so
	// the index has every object once the cache has synced.
	for _, obj := range []client.Object{&v1.Repository{}, &v1.Registry{}, &v1.TagShard{}} {
		inf, err := c.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, err
		}
		switch obj.(type) {
		case *v1.Repository:
			if catalogSynced, err = inf.AddEventHandler(s.catalog.handler()); err != nil {
				return nil, err
			}
		case *v1.TagShard:
			if shardsSynced, err = inf.AddEventHandler(s.shards.handler()); err != nil {
				return nil, err
			}
		}
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme, Mapper: mapper})
	if err != nil {
		return nil, err
	}
	s.client, s.cache = cl, c
	if opts.Metrics != nil {
		if err := registerAll(opts.Metrics, s.liveReads, s.journalMisses, s.conflicts); err != nil {
			return nil, err
		}
	}
	go s.recordPulls(ctx)
	go func() {
		if err := c.Start(ctx); err != nil {
			opts.Logger.Error("kubernetes tag store cache stopped", "error", err)
		}
	}()
	go func() {
		// The informers retry on their own with backoff; this only waits.
		if c.WaitForCacheSync(ctx) && toolscache.WaitForCacheSync(ctx.Done(), catalogSynced.HasSynced, shardsSynced.HasSynced) {
			s.synced.Store(true)
			opts.Logger.Info("kubernetes tag store: Repository cache synced")
		}
	}()
	return s, nil
}

// Ready is nil once the cache has synced, else why the store is not serving.
// It stays nil through later API-server outages: pulls keep coming from the
// cache, and writes answer 503 on their own.
func (s *Store) Ready() error {
	if s.synced.Load() {
		return nil
	}
	return s.notReady.Load().(error)
}

// ready is Ready as the error a request gets: 503 with Retry-After.
func (s *Store) ready() error {
	if err := s.Ready(); err != nil {
		return unavailable(err)
	}
	return nil
}

func registerAll(r prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// LiveReads counts reads that missed the cache (for tests and benchmarks).
func (s *Store) LiveReads() float64 { return counterValue(s.liveReads) }

// Conflicts counts status writes retried after a conflict (for benchmarks).
func (s *Store) Conflicts() float64 { return counterValue(s.conflicts) }
