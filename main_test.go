package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestManagerBinary runs the built operator against a real API server, as
// the ServiceAccount and with the RBAC of the kustomize base
// (config/default): it takes the leader Lease, answers its health
// endpoints, serves metrics only over HTTPS to a token allowed `get
// /metrics`, and gives a Registry's Deployment the --registryd-image.
func TestManagerBinary(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	dir := t.TempDir()
	bin := filepath.Join(dir, "manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kubeconfig, err := env.WriteKubeconfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(env.AssetsDir(), "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	kubectl("apply", "--server-side", "--force-conflicts", "-k", "config/default")
	// A scraper bound to the base's metrics-reader ClusterRole, and a
	// ServiceAccount with no such binding.
	kubectl("-n", "default", "create", "serviceaccount", "scraper")
	kubectl("-n", "default", "create", "serviceaccount", "stranger")
	kubectl("create", "clusterrolebinding", "scraper", "--clusterrole=stevedore-metrics-reader", "--serviceaccount=default:scraper")

	metrics, probes := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--leader-elect", "--leader-election-namespace=stevedore-system",
		"--metrics-bind-address="+metrics, "--health-probe-bind-address="+probes, "--registryd-image=example.test/stevedore:v9")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+impersonating(t, kubeconfig, "system:serviceaccount:stevedore-system:stevedore-operator"))
	logs, _ := os.Create(filepath.Join(dir, "manager.log"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()

	checks := []struct {
		name  string
		check func() error
	}{
		{"healthz", func() error { _, err := getStatus("http://"+probes+"/healthz", "", http.StatusOK); return err }},
		{"readyz", func() error { _, err := getStatus("http://"+probes+"/readyz", "", http.StatusOK); return err }},
		{"leader lease", func() error {
			return env.Client.Get(ctx, client.ObjectKey{Namespace: "stevedore-system", Name: "stevedore-operator.stevedore.dev"}, &coordinationv1.Lease{})
		}},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) { eventually(t, logs.Name(), c.check) })
	}
	t.Run("metrics", func(t *testing.T) {
		scraper := kubectl("-n", "default", "create", "token", "scraper")
		stranger := kubectl("-n", "default", "create", "token", "stranger")
		for _, tc := range []struct {
			name, token string
			want        int
		}{
			{"no token", "", http.StatusUnauthorized},
			{"a token that is none", "not-a-token", http.StatusUnauthorized},
			{"a ServiceAccount without metrics-reader", stranger, http.StatusForbidden},
			{"a ServiceAccount with metrics-reader", scraper, http.StatusOK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				eventually(t, logs.Name(), func() error {
					_, err := getStatus("https://"+metrics+"/metrics", tc.token, tc.want)
					return err
				})
			})
		}
		if _, err := getStatus("http://"+metrics+"/metrics", scraper, http.StatusOK); err == nil {
			t.Error("the metrics answer plain HTTP")
		}
		body, err := getStatus("https://"+metrics+"/metrics", scraper, http.StatusOK)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(body, "controller_runtime_reconcile_total{") {
			t.Errorf("the metrics hold no controller_runtime_reconcile_total:\n%.2000s", body)
		}
	})
	t.Run("registryd image", func(t *testing.T) {
		reg := &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "bin", Namespace: "default"},
			Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}
		if err := env.Client.Create(ctx, reg); err != nil {
			t.Fatal(err)
		}
		eventually(t, logs.Name(), func() error {
			var d appsv1.Deployment
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "bin-registry"}, &d); err != nil {
				return err
			}
			if img := d.Spec.Template.Spec.Containers[0].Image; img != "example.test/stevedore:v9" {
				return fmt.Errorf("image %s", img)
			}
			return nil
		})
	})
}

// impersonating writes a copy of kubeconfig that acts as user, as the
// operator's pod acts as its ServiceAccount.
func impersonating(t *testing.T, kubeconfig, user string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = user
	}
	path := kubeconfig + "-" + strings.ReplaceAll(user, ":", "-")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// metricsClient skips verifying the operator's self-signed certificate, as
// the chart's ServiceMonitor does.
var metricsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a self-signed test certificate
}}

// getStatus GETs url, with token as its bearer token unless empty, wants
// the status code want and returns the body.
func getStatus(url, token string, want int) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != want {
		err = fmt.Errorf("%s: %s, want %d: %.200s", url, resp.Status, want, b)
	}
	return string(b), err
}

func eventually(t *testing.T, logFile string, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	logs, _ := os.ReadFile(logFile)
	t.Fatalf("%v\noperator log:\n%s", err, logs)
}

// TestMetricsCertDir: --metrics-cert-dir's keypair is the one the metrics
// endpoint serves; without it, a self-signed one for localhost.
func TestMetricsCertDir(t *testing.T) {
	dir := t.TempDir()
	crt, key, err := certutil.GenerateSelfSignedCertKey("metrics.stevedore.test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), crt, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, certDir, want string
	}{
		{"cert dir", dir, "metrics.stevedore.test"},
		{"self-signed", "", "localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := testutil.FreeAddr(t)
			// The filter builds its API clients without contacting the
			// API server; no request here gets that far.
			srv, err := metricsserver.NewServer(metricsFlags{addr: addr, secure: true, certDir: tc.certDir}.options(),
				&rest.Config{Host: "https://127.0.0.1:1"}, http.DefaultClient)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Start(ctx) }()
			defer func() { cancel(); <-done }()
			var conn *tls.Conn
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				if conn, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}); err == nil || time.Now().After(deadline) { //nolint:gosec // reading the served certificate
					break
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			state := conn.ConnectionState()
			if cn := state.PeerCertificates[0].Subject.CommonName; !strings.HasPrefix(cn, tc.want) {
				t.Errorf("served certificate for %q, want %q", cn, tc.want)
			}
			if state.NegotiatedProtocol == "h2" {
				t.Error("HTTP/2 negotiated; the metrics port serves HTTP/1.1 only")
			}
		})
	}
}
