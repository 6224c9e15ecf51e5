package controllers_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// countingProxy stands in front of a storage server and counts the storage
// probes (writes of the operator's probe object) that reach it.
func countingProxy(t *testing.T, srv *storageservers.Server) (addr string, probes *atomic.Int64) {
	t.Helper()
	probes = &atomic.Int64{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: srv.Addr})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPut && strings.Contains(req.URL.Path, "_stevedore/probe/") {
			probes.Add(1)
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(proxy.Close)
	return strings.TrimPrefix(proxy.URL, "http://"), probes
}

// TestFailingProbeIsQuiet: a Registry whose bucket refuses its key is probed
// once per retry interval, and its status is written at most twice per
// interval (the probe time, and a change of verdict), not in a hot loop.
func TestFailingProbeIsQuiet(t *testing.T) {
	// Mostly sleeps through retry intervals; counts only its namespace's writes.
	t.Parallel()
	ns := newNamespace(t)
	srv := storageservers.Start(t, storageservers.S3)
	addr, probes := countingProxy(t, srv)
	data := map[string]string{}
	for k, v := range srv.Env {
		data[k] = v
	}
	data["AWS_SECRET_ACCESS_KEY"] = "wrong"
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "wrong-key", Namespace: ns}, StringData: data}
	if err := env.Client.Create(context.Background(), sec); err != nil {
		t.Fatal(err)
	}
	createRegistry(t, ns, "quiet", func(r *v1.Registry) {
		r.Spec.Storage.URL = strings.Replace(srv.URL, srv.Addr, addr, 1)
		r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: "wrong-key"}
	})
	storageReady := func() (*metav1.Condition, error) {
		var reg v1.Registry
		if err := get(&reg, ns, "quiet"); err != nil {
			return nil, err
		}
		c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStorageReady)
		if c == nil || c.Reason != "ProbeFailed" {
			return nil, fmt.Errorf("StorageReady = %+v, want ProbeFailed", c)
		}
		return c, nil
	}
	var before *metav1.Condition
	eventually(t, "probe fails", func() (err error) { before, err = storageReady(); return err })
	time.Sleep(probeRetryInterval) // the first pass's children settle

	// A hot loop makes hundreds of writes an interval; 5 intervals show it.
	const intervals = 5
	writes0, probes0 := len(operator.requests.writesIn(ns)), probes.Load()
	time.Sleep(intervals * probeRetryInterval)
	writes, nprobes := operator.requests.writesIn(ns)[writes0:], probes.Load()-probes0
	t.Logf("over %d retry intervals of %v: %d API writes, %d probes", intervals, probeRetryInterval, len(writes), nprobes)
	if len(writes) > 2*intervals {
		t.Errorf("%d API writes in %d intervals, want at most %d:\n%s", len(writes), intervals, 2*intervals, strings.Join(writes, "\n"))
	}
	if nprobes > intervals+1 {
		t.Errorf("%d probes in %d intervals, want at most %d", nprobes, intervals, intervals+1)
	}
	after, err := storageReady()
	if err != nil {
		t.Fatal(err)
	}
	if after.Message != before.Message || !after.LastTransitionTime.Equal(&before.LastTransitionTime) {
		t.Errorf("StorageReady changed while the cause did not:\nbefore %+v\nafter  %+v", before, after)
	}
	if !strings.Contains(after.Message, "SignatureDoesNotMatch") {
		t.Errorf("StorageReady message %q does not say why", after.Message)
	}
}

// TestOperatorLendsNoIdentity: with working cloud credentials in the
// operator's own environment, a Registry without storage.secretRef must not
// get them: its bucket is not probed (registryd's pod identity reaches it),
// and one whose secretRef lacks keys is refused, not helped out.
func TestOperatorLendsNoIdentity(t *testing.T) {
	ns := newNamespace(t)
	srv := storageservers.Start(t, storageservers.S3)
	addr, probes := countingProxy(t, srv)
	// The operator runs in this process: these are its credentials, and
	// they open the bucket.
	for k, v := range srv.Env {
		t.Setenv(k, v)
	}
	empty := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "no-keys", Namespace: ns}, StringData: map[string]string{"AWS_REGION": "us-east-1"}}
	if err := env.Client.Create(context.Background(), empty); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		secretRef *corev1.LocalObjectReference
		reason    string
		message   string
	}{
		{"no-secret-ref", nil, "ProbedByPods", "does not lend"},
		{"secret-without-keys", &corev1.LocalObjectReference{Name: "no-keys"}, "ProbeFailed", "no AWS_ACCESS_KEY_ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			createRegistry(t, ns, tc.name, func(r *v1.Registry) {
				r.Spec.Storage.URL = strings.Replace(srv.URL, srv.Addr, addr, 1)
				r.Spec.Storage.SecretRef = tc.secretRef
			})
			eventually(t, "StorageReady", func() error {
				var reg v1.Registry
				if err := get(&reg, ns, tc.name); err != nil {
					return err
				}
				c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStorageReady)
				if c == nil || c.Reason != tc.reason || !strings.Contains(c.Message, tc.message) {
					return fmt.Errorf("StorageReady = %+v, want %s with %q", c, tc.reason, tc.message)
				}
				return nil
			})
		})
	}
	if n := probes.Load(); n != 0 {
		t.Errorf("%d probes reached the bucket with the operator's own credentials", n)
	}
}
