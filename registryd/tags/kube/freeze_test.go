package kube_test

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"

	"k8s.io/client-go/rest"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// watchGate holds back the watch events a replica's informer receives while
// frozen, so a test can make that replica's cache stale on purpose instead
// of hoping to win a race against the watch.
type watchGate struct {
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
}

func newWatchGate() *watchGate {
	g := &watchGate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *watchGate) freeze() { g.mu.Lock(); g.frozen = true; g.mu.Unlock() }

func (g *watchGate) thaw() {
	g.mu.Lock()
	g.frozen = false
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *watchGate) wait() {
	g.mu.Lock()
	for g.frozen {
		g.cond.Wait()
	}
	g.mu.Unlock()
}

// config is env.Config with watch streams passing through the gate.
func (g *watchGate) config() *rest.Config {
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err == nil && r.URL.Query().Get("watch") == "true" {
				resp.Body = &gatedBody{ReadCloser: resp.Body, gate: g}
			}
			return resp, err
		})
	})
	return cfg
}

type gatedBody struct {
	io.ReadCloser
	gate *watchGate
}

// Read hands on what arrived only once the gate is open.
func (b *gatedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.gate.wait()
	return n, err
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// frozenReplica is a replica whose cache can be frozen; thawed at cleanup so
// its informer can stop.
func frozenReplica(t testing.TB, reg *v1.Registry, journal tags.Store) (*kube.Store, *watchGate) {
	t.Helper()
	g := newWatchGate()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	t.Cleanup(g.thaw) // runs before cancel: cleanups are LIFO
	s, err := kube.New(ctx, g.config(), kube.Options{Namespace: reg.Namespace, Registry: reg.Name, Journal: journal})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, s)
	return s, g
}

// cachedSees waits until s answers tag of path with want from its cache,
// without a live read.
func cachedSees(t testing.TB, s *kube.Store, path, tag, want string) {
	t.Helper()
	eventually(t, func() bool {
		before := s.LiveReads()
		d, err := s.Get(context.Background(), path, tag)
		return s.LiveReads() == before && err == nil && d.Digest.String() == want
	})
}
