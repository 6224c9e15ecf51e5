package main

import (
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKubeAPIRateLimit: --kube-api-qps and --kube-api-burst reach the API
// client. By default a burst of pushes to new repositories is not held
// back at client-go's 5 requests/s; a low limit given by flags holds
// requests back as asked.
func TestKubeAPIRateLimit(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"NamespaceList","apiVersion":"v1","items":[]}`)
	}))
	defer api.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+api.URL+`"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		requests int
		atLeast  time.Duration // the limiter must hold the requests back this long
		atMost   time.Duration
	}{
		// client-go's default (5/s, burst 10) would take 18 s for these.
		{name: "defaults let a burst through", requests: 100, atMost: 5 * time.Second},
		{name: "flags limit the rate", args: []string{"--kube-api-qps=20", "--kube-api-burst=1"}, requests: 21, atLeast: 900 * time.Millisecond, atMost: 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("registryd", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var c config
			bindFlags(fs, &c)
			if err := fs.Parse(append([]string{"--registry=r", "--kubeconfig=" + kubeconfig}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			kc, err := connectKube(c, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for range tc.requests {
				if _, err := kc.cs.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if took := time.Since(start); took < tc.atLeast || took > tc.atMost {
				t.Fatalf("%d requests took %s, want between %s and %s", tc.requests, took, tc.atLeast, tc.atMost)
			}
		})
	}
}
