// Package node_test runs Stevedore where users run it: on a real node
// (kubelet, containerd, kube-proxy; hack/node.sh) with the image `make image`
// builds, following the README step by step. hack/node-e2e.sh brings the
// node up, runs this test inside the node's network namespace, and tears the
// node down; without STEVEDORE_NODE_DIR the test skips.
package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// node is what hack/node.sh up exported.
type node struct {
	dir, ip, kubectl, helm, crane, certsD, containerd string
}

func setup(t *testing.T) *node {
	t.Helper()
	dir := os.Getenv("STEVEDORE_NODE_DIR")
	if dir == "" {
		t.Skip("no real node: run hack/node-e2e.sh (make test does)")
	}
	clients := os.Getenv("STEVEDORE_CLIENTS")
	return &node{
		dir:        dir,
		ip:         os.Getenv("NODE_IP"),
		kubectl:    os.Getenv("KUBECTL"),
		helm:       os.Getenv("HELM"),
		crane:      filepath.Join(clients, "crane"),
		certsD:     os.Getenv("NODE_CERTS_D"),
		containerd: os.Getenv("CONTAINERD_ADDRESS"),
	}
}

func (n *node) run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

func (n *node) must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := n.run(t, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (n *node) kc(t *testing.T, args ...string) string {
	t.Helper()
	return n.must(t, n.kubectl, args...)
}

func (n *node) apply(t *testing.T, yaml string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "obj.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	n.kc(t, "apply", "-f", f)
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// dumpOnFailure prints what a user would look at when a step fails.
func (n *node) dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, args := range [][]string{
			{"get", "nodes,pods,deploy,svc,pvc,registries,repositories", "-A", "-o", "wide"},
			{"get", "events", "-A", "--field-selector", "type!=Normal"},
			{"-n", "stevedore-system", "logs", "deploy/stevedore-operator", "--tail", "80"},
			{"-n", "demo", "logs", "-l", "app.kubernetes.io/name=registryd", "--tail", "40", "--prefix"},
		} {
			out, err := n.run(t, n.kubectl, args...)
			t.Logf("kubectl %s:\n%s%v", strings.Join(args, " "), out, err)
		}
	})
}

// registry is a Registry's address on the node (NodePort), as the kubelet
// reaches it, trusted as plain HTTP by containerd.
func (n *node) registry(t *testing.T, ns, svc string) string {
	t.Helper()
	port := strings.TrimSpace(n.kc(t, "-n", ns, "get", "svc", svc, "-o", "jsonpath={.spec.ports[0].nodePort}"))
	host := n.ip + ":" + port
	hosts := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)
	if err := os.MkdirAll(filepath.Join(n.certsD, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.certsD, host, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	// kubectl rollout status returns before kube-proxy programs a NodePort.
	eventually(t, 60*time.Second, "registryd through the NodePort", func() error {
		resp, err := http.Get("http://" + host + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 && resp.StatusCode != 401 {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	return host
}

func randomLayer(t *testing.T) string {
	t.Helper()
	b := make([]byte, 64<<10)
	_, _ = rand.Read(b)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "data"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, "layer.tar")
	if out, err := exec.Command("tar", "-C", dir, "-cf", tarPath, "data").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	return tarPath
}

// TestREADME follows the README on a real node, then rolls the operator and
// registryd to new pods while clients push and pull.
func TestREADME(t *testing.T) {
	n := setup(t)
	n.dumpOnFailure(t)
	root := testenv.RepoRoot()

	t.Log("helm install: the image `make image` built, under the chart's own name")
	n.kc(t, "create", "namespace", "stevedore-system")
	n.kc(t, "label", "namespace", "stevedore-system", "pod-security.kubernetes.io/enforce=restricted")
	n.must(t, n.helm, "install", "stevedore", filepath.Join(root, "charts/stevedore"),
		"-n", "stevedore-system", "--wait", "--timeout", "3m")
	n.kc(t, "-n", "stevedore-system", "rollout", "status", "deploy/stevedore-operator", "--timeout=2m")
	eventually(t, 60*time.Second, "the operator's Lease", func() error {
		holder, err := n.run(t, n.kubectl, "-n", "stevedore-system", "get", "lease", "stevedore-operator.stevedore.dev", "-o", "jsonpath={.spec.holderIdentity}")
		if err != nil || strings.TrimSpace(holder) == "" {
			return fmt.Errorf("no holder: %q %v", holder, err)
		}
		return nil
	})

	t.Log("the operator's metrics: HTTPS on its Service, only for a token allowed get /metrics")
	n.kc(t, "-n", "stevedore-system", "create", "serviceaccount", "scraper")
	n.kc(t, "create", "clusterrolebinding", "stevedore-scraper", "--clusterrole=stevedore-metrics-reader", "--serviceaccount=stevedore-system:scraper")
	// The test's own binding: TestUninstall counts every stevedore-* left.
	t.Cleanup(func() {
		_, _ = n.run(t, n.kubectl, "delete", "clusterrolebinding", "stevedore-scraper", "--ignore-not-found")
	})
	token := strings.TrimSpace(n.kc(t, "-n", "stevedore-system", "create", "token", "scraper"))
	ip := strings.TrimSpace(n.kc(t, "-n", "stevedore-system", "get", "service", "stevedore-operator-metrics", "-o", "jsonpath={.spec.clusterIP}"))
	metricsURL := "https://" + ip + ":8443/metrics"
	for _, c := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {token, http.StatusOK}} {
		eventually(t, 60*time.Second, fmt.Sprintf("metrics answering %d", c.want), func() error {
			return scrape(metricsURL, c.token, c.want)
		})
	}

	t.Log("a Registry with 3 replicas on one PVC, under the restricted Pod Security profile")
	pv := filepath.Join(n.dir, "pv", "demo")
	if err := os.MkdirAll(pv, 0o755); err != nil {
		t.Fatal(err)
	}
	// hostPath ignores fsGroup; registryd runs as 65532.
	if err := os.Chown(pv, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	n.apply(t, restrictedNamespace("demo")+fmt.Sprintf(`---
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-registry}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: manual
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: %q, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: registry-blobs, namespace: demo}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: manual
  volumeName: demo-registry
  resources: {requests: {storage: 1Gi}}
---
apiVersion: stevedore.dev/v1alpha1
kind: Registry
metadata: {name: registry, namespace: demo}
spec:
  replicas: 3
  storage:
    url: file:///var/lib/stevedore
    persistentVolumeClaim: {claimName: registry-blobs, accessModes: [ReadWriteMany]}
  service: {type: NodePort}
  auth: {mode: none}
`, pv))
	n.kc(t, "-n", "demo", "wait", "--for=condition=Ready", "registry/registry", "--timeout=4m")
	ready := strings.TrimSpace(n.kc(t, "-n", "demo", "get", "deploy", "registry-registry", "-o", "jsonpath={.status.readyReplicas}"))
	if ready != "3" {
		t.Fatalf("registryd ready replicas %q, want 3", ready)
	}
	host := n.registry(t, "demo", "registry-registry")

	t.Log("push with crane through the NodePort; the tag lands in Repository status")
	// The node's sandbox image: a static program that waits for SIGTERM,
	// runnable under the restricted profile.
	image := host + "/demo/hello:v1"
	n.must(t, n.crane, "push", "--insecure", filepath.Join(n.dir, "pause.tar"), image)
	eventually(t, 30*time.Second, "the tag in Repository status", func() error {
		out, err := n.run(t, n.kubectl, "-n", "demo", "get", "repositories", "-o", `jsonpath={.items[?(@.spec.name=="demo/hello")].status.tags[*].name}`)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "v1") {
			return fmt.Errorf("no tag v1 in Repository demo/hello: %q", out)
		}
		return nil
	})

	t.Log("a workload whose image is in the Registry, pulled by the kubelet")
	n.workload(t, "apps", "hello", image)

	t.Log("upgrade the operator (and with it registryd) to a new image while clients push and pull")
	n.rollUnderLoad(t, host, image, func() {
		n.must(t, n.helm, "upgrade", "stevedore", filepath.Join(root, "charts/stevedore"), "-n", "stevedore-system",
			"--reuse-values", "--set", "image.tag=0.1.1-e2e", "--wait", "--timeout", "3m")
		eventually(t, 2*time.Minute, "registryd on the new image", func() error {
			img, err := n.run(t, n.kubectl, "-n", "demo", "get", "deploy", "registry-registry", "-o",
				"jsonpath={.spec.template.spec.containers[0].image}")
			if err != nil || !strings.HasSuffix(strings.TrimSpace(img), ":0.1.1-e2e") {
				return fmt.Errorf("registryd image %q %v", img, err)
			}
			return nil
		})
		n.kc(t, "-n", "demo", "rollout", "status", "deploy/registry-registry", "--timeout=3m")
	})
	t.Log("and restart registryd's pods once more, under the same load")
	n.rollUnderLoad(t, host, image, func() {
		n.kc(t, "-n", "demo", "rollout", "restart", "deploy/registry-registry")
		n.kc(t, "-n", "demo", "rollout", "status", "deploy/registry-registry", "--timeout=3m")
	})
	t.Log("blobs pushed before the upgrade still pull, from the same PVC")
	n.must(t, n.crane, "pull", "--insecure", image, filepath.Join(t.TempDir(), "v1.tar"))

	t.Log("two operator pods started (install, upgrade): no readiness or liveness probe refused while starting")
	// A pod being stopped (the install's, at the upgrade) closes its probe
	// port before it exits while the kubelet still probes it: a refusal at
	// or after the pod's Killing event is its shutdown, not its start.
	events := n.kc(t, "-n", "stevedore-system", "get", "events",
		"-o", `jsonpath={range .items[*]}{.reason}|{.involvedObject.name}|{.firstTimestamp}|{.message}{"\n"}{end}`)
	killed := map[string]string{} // pod: when the kubelet began stopping it (RFC 3339, sorts as time)
	type probeEvent struct{ pod, at, message string }
	var unhealthy []probeEvent
	for _, line := range strings.Split(strings.TrimSpace(events), "\n") {
		f := strings.SplitN(line, "|", 4)
		if len(f) != 4 {
			continue
		}
		switch f[0] {
		case "Killing":
			if at, ok := killed[f[1]]; !ok || f[2] < at {
				killed[f[1]] = f[2]
			}
		case "Unhealthy":
			unhealthy = append(unhealthy, probeEvent{f[1], f[2], f[3]})
		}
	}
	for _, e := range unhealthy {
		line := e.pod + ": " + e.message
		if at, ok := killed[e.pod]; ok && e.at >= at {
			t.Logf("probe event while the pod was being stopped: %s", line)
			continue
		}
		// A probe before the operator listens is refused: what the startup
		// probe prevents. A probe that times out on this loaded machine
		// (conformance runs beside in make test) says nothing about start-up.
		startup := strings.Contains(line, "connection refused")
		if startup && (strings.Contains(line, "Readiness probe failed") || strings.Contains(line, "Liveness probe failed")) {
			t.Errorf("the operator's pod logged %s", line)
		} else {
			t.Logf("probe event: %s", line)
		}
	}
}

// scrape GETs the operator's metrics with token (none when empty) and
// wants the status want; a 200 must hold controller-runtime's metrics.
func scrape(url, token string, want int) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// The operator's certificate is self-signed, as the chart's
	// ServiceMonitor expects.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s: %s, want %d: %.200s", url, resp.Status, want, body)
	}
	if want == http.StatusOK && !bytes.Contains(body, []byte("controller_runtime_reconcile_total{")) {
		return fmt.Errorf("%s: no controller_runtime_reconcile_total in %.500s", url, body)
	}
	return nil
}

// restrictedNamespace is a namespace enforcing the restricted Pod Security
// profile, as a YAML document.
func restrictedNamespace(name string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels: {pod-security.kubernetes.io/enforce: restricted}
`, name)
}

// workload runs image as a Deployment under the restricted profile, in a
// namespace of its own, and waits until it is available: the kubelet
// pulled it through containerd.
func (n *node) workload(t *testing.T, ns, name, image string) {
	t.Helper()
	n.apply(t, restrictedNamespace(ns))
	n.workloadAs(t, ns, name, "default", image)
	n.kc(t, "-n", ns, "rollout", "status", "deploy/"+name, "--timeout=2m")
}

// rollUnderLoad runs roll (an upgrade, a restart) while one client pushes
// new images and another pulls: no request may fail, and every pushed image
// must pull whole afterwards.
func (n *node) rollUnderLoad(t *testing.T, host, base string, roll func()) {
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var pushes, pulls atomic.Int64
	var mu sync.Mutex
	var failures []string
	var pushed []string
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, err.Error())
	}
	wg.Add(2)
	go func() { // pusher
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			tag := fmt.Sprintf("%s/demo/load:%d", host, i)
			if _, err := n.run(t, n.crane, "append", "--insecure", "-b", base, "-f", randomLayer(t), "-t", tag); err != nil {
				fail(err)
				continue
			}
			pushes.Add(1)
			mu.Lock()
			pushed = append(pushed, tag)
			mu.Unlock()
		}
	}()
	go func() { // puller
		defer wg.Done()
		out := filepath.Join(t.TempDir(), "pull.tar")
		for ctx.Err() == nil {
			if _, err := n.run(t, n.crane, "pull", "--insecure", base, out); err != nil {
				fail(err)
				continue
			}
			pulls.Add(1)
		}
	}()
	time.Sleep(3 * time.Second)
	roll()
	time.Sleep(3 * time.Second)
	stop()
	wg.Wait()
	t.Logf("during the rollout: %d pushes and %d pulls, %d failed", pushes.Load(), pulls.Load(), len(failures))
	for _, f := range failures {
		t.Errorf("failed during rollout: %s", f)
	}
	if pushes.Load() == 0 || pulls.Load() == 0 {
		t.Fatalf("no load ran: %d pushes, %d pulls", pushes.Load(), pulls.Load())
	}
	out := filepath.Join(t.TempDir(), "check.tar")
	for _, tag := range pushed {
		if _, err := n.run(t, n.crane, "pull", "--insecure", tag, out); err != nil {
			t.Errorf("pushed during the rollout, not pullable after: %v", err)
		}
	}
}

// TestWorkloadIdentity: in auth mode kubernetes, the kubelet pulls with the
// pod's own ServiceAccount token through stevedore-credential-provider
// (hack/node-e2e.sh configures it for ident/registry on NodePort 30500): a
// pod whose ServiceAccount may pull starts, one whose ServiceAccount may not
// gets ErrImagePull, and registryd's log says why. Runs after TestREADME,
// which installed the operator.
func TestWorkloadIdentity(t *testing.T) {
	n := setup(t)
	n.dumpOnFailure(t)
	host, audience := os.Getenv("NODE_CREDENTIAL_PROVIDER_MATCH"), os.Getenv("NODE_CREDENTIAL_PROVIDER_AUDIENCE")
	if host == "" || audience != "stevedore.dev/registry/ident/registry" {
		t.Fatalf("the node's kubelet has no credential provider for ident/registry: %q %q", host, audience)
	}
	_, port, _ := strings.Cut(host, ":")
	n.apply(t, restrictedNamespace("ident")+fmt.Sprintf(`---
apiVersion: stevedore.dev/v1alpha1
kind: Registry
metadata: {name: registry, namespace: ident}
spec:
  storage: {url: "mem://"}
  auth: {mode: kubernetes}
---
# A fixed NodePort: the kubelet's matchImages names an exact host:port.
apiVersion: v1
kind: Service
metadata: {name: registry-pull, namespace: ident}
spec:
  type: NodePort
  selector: {app.kubernetes.io/name: registryd, app.kubernetes.io/instance: registry}
  ports: [{name: http, port: 5000, targetPort: http, nodePort: %[1]s}]
---
# NodeRestriction: the kubelet may request tokens for this audience only.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: stevedore-registry-ident-registry-token-audience}
rules:
- apiGroups: [""]
  resources: [%[2]q]
  verbs: [request-serviceaccounts-token-audience]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: stevedore-registry-ident-registry-token-audience}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: stevedore-registry-ident-registry-token-audience}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: pusher, namespace: ident}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: puller, namespace: ident}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stranger, namespace: ident}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: push, namespace: ident}
rules: [{apiGroups: [stevedore.dev], resources: [repositories], verbs: [pull, push]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pusher-pushes, namespace: ident}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: push}
subjects: [{kind: ServiceAccount, name: pusher, namespace: ident}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pull, namespace: ident}
rules: [{apiGroups: [stevedore.dev], resources: [repositories], verbs: [pull]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: puller-pulls, namespace: ident}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pull}
subjects: [{kind: ServiceAccount, name: puller, namespace: ident}]
`, port, audience))
	n.kc(t, "-n", "ident", "wait", "--for=condition=Ready", "registry/registry", "--timeout=3m")
	n.registry(t, "ident", "registry-pull")

	t.Log("push as the pusher ServiceAccount, its token as the password")
	token := strings.TrimSpace(n.kc(t, "-n", "ident", "create", "token", "pusher", "--audience", audience, "--duration", "1h"))
	image := host + "/team/app:v1"
	if _, err := n.run(t, n.crane, "push", "--insecure", filepath.Join(n.dir, "pause.tar"), image); err == nil {
		t.Fatal("an anonymous push was accepted in auth mode kubernetes")
	}
	docker := t.TempDir()
	t.Setenv("DOCKER_CONFIG", docker)
	n.must(t, n.crane, "auth", "login", host, "-u", "pusher", "-p", token)
	n.must(t, n.crane, "push", "--insecure", filepath.Join(n.dir, "pause.tar"), image)
	if err := os.RemoveAll(docker); err != nil { // the kubelet has no credentials but the pod's
		t.Fatal(err)
	}

	t.Log("allowed: a pod running as puller starts with no imagePullSecrets")
	n.workloadAs(t, "ident", "allowed", "puller", image)
	n.kc(t, "-n", "ident", "rollout", "status", "deploy/allowed", "--timeout=2m")

	t.Log("denied: a pod running as stranger gets ErrImagePull, and registryd logs why")
	n.workloadAs(t, "ident", "denied", "stranger", image)
	eventually(t, 90*time.Second, "ErrImagePull for the stranger's pod", func() error {
		reason, err := n.run(t, n.kubectl, "-n", "ident", "get", "pods", "-l", "app=denied", "-o",
			"jsonpath={.items[*].status.containerStatuses[*].state.waiting.reason}")
		if err != nil {
			return err
		}
		if !strings.Contains(reason, "ErrImagePull") && !strings.Contains(reason, "ImagePullBackOff") {
			return fmt.Errorf("waiting reason %q", reason)
		}
		return nil
	})
	logs := n.kc(t, "-n", "ident", "logs", "-l", "app.kubernetes.io/name=registryd", "--tail", "-1")
	if !strings.Contains(logs, "access denied") || !strings.Contains(logs, "system:serviceaccount:ident:stranger") {
		t.Errorf("registryd's log does not say it denied ident:stranger:\n%s", logs)
	}
	if strings.Contains(logs, token) {
		t.Error("registryd logged a token")
	}
	// The operator's default memory limit (1Gi), read from the pod's cgroup
	// (v1 on this node), becomes registryd's soft limit.
	if !strings.Contains(logs, "soft memory limit set from the container's") || !strings.Contains(logs, "1073741824") {
		t.Errorf("registryd did not take a soft memory limit from its pod's 1Gi limit:\n%s", logs)
	}
	ev := n.kc(t, "-n", "ident", "get", "events", "--field-selector", "reason=Failed", "-o", "jsonpath={.items[*].message}")
	t.Logf("what the denied pod's events say: %s", ev)
}

func (n *node) workloadAs(t *testing.T, ns, name, sa, image string) {
	t.Helper()
	n.apply(t, fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      serviceAccountName: %[3]s
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: app
        image: %[4]s
        imagePullPolicy: Always
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
`, ns, name, sa, image))
}

// TestPodKilledMidPush deletes a registryd pod in the middle of chunked
// uploads, gracefully and by force: the client resumes each upload where the
// registry says it stands (GET on the upload URL, Range), the blob it
// commits has exactly its bytes, and a scrub of the whole bucket finds
// nothing wrong. Runs after TestREADME (Registry demo/registry, 3 replicas).
func TestPodKilledMidPush(t *testing.T) {
	n := setup(t)
	n.dumpOnFailure(t)
	host := n.registry(t, "demo", "registry-registry")
	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprintf("force=%v", force), func(t *testing.T) {
			data := make([]byte, 6<<20)
			_, _ = rand.Read(data)
			// A slow client: the deletion lands while chunks still come.
			onChunk := func(i int) {
				time.Sleep(150 * time.Millisecond)
				if i != 8 {
					return
				}
				// Gracefully one pod: it drains, nothing may fail. By force
				// every pod: the client's connection breaks and the Service
				// has no endpoint until the new pods are Ready.
				args := []string{"-n", "demo", "delete", "pod", "-l", "app.kubernetes.io/name=registryd", "--wait=false"}
				if force {
					args = append(args, "--grace-period=0", "--force")
				} else {
					pod := strings.TrimSpace(n.kc(t, "-n", "demo", "get", "pods", "-l", "app.kubernetes.io/name=registryd",
						"--field-selector", "status.phase=Running", "-o", "jsonpath={.items[0].metadata.name}"))
					args = []string{"-n", "demo", "delete", "pod", pod, "--wait=false"}
				}
				n.kc(t, args...)
			}
			retries := pushChunked(t, "http://"+host, "demo/chunked", data, 256<<10, onChunk)
			if force && retries == 0 {
				t.Error("every registryd pod was killed mid-upload, yet no request failed: the test did not test resuming")
			}
			t.Logf("6 MiB in 24 chunks across a pod deletion: %d resumes", retries)
		})
	}
	n.kc(t, "-n", "demo", "rollout", "status", "deploy/registry-registry", "--timeout=3m")
	out := n.kc(t, "-n", "demo", "exec", "deploy/registry-registry", "--", "/registryd", "scrub", "--storage", "file:///var/lib/stevedore")
	t.Log(strings.TrimSpace(out))
}

// pushChunked uploads data in chunks (POST, PATCH with Content-Range, PUT),
// resuming from the registry's Range after any failed request, as the spec
// lets a client do; it then reads the blob back. It returns the resumes.
func pushChunked(t *testing.T, base, repo string, data []byte, chunk int, onChunk func(int)) int {
	t.Helper()
	c := &http.Client{Timeout: 20 * time.Second}
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	var loc string
	retry := func(what string, f func() error) int {
		for i := 0; ; i++ {
			err := f()
			if err == nil {
				return i
			}
			if i == 60 {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	abs := func(l string) string {
		if strings.HasPrefix(l, "/") {
			return base + l
		}
		return l
	}
	retries := retry("POST", func() error {
		resp, err := c.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("POST: %s", resp.Status)
		}
		loc = abs(resp.Header.Get("Location"))
		return nil
	})
	offset := 0
	for i := 0; offset < len(data); i++ {
		onChunk(i)
		end := min(offset+chunk, len(data))
		req, _ := http.NewRequest(http.MethodPatch, loc, bytes.NewReader(data[offset:end]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", offset, end-1))
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				loc, offset = abs(resp.Header.Get("Location")), end
				continue
			}
			err = fmt.Errorf("PATCH %d-%d: %s", offset, end-1, resp.Status)
		}
		t.Logf("chunk %d failed (%v); asking the registry where the upload stands", i, err)
		retries += 1 + retry("GET upload status", func() error {
			resp, err := c.Get(loc)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				return fmt.Errorf("GET upload: %s", resp.Status)
			}
			var last int
			if _, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &last); err != nil {
				return fmt.Errorf("Range %q: %w", resp.Header.Get("Range"), err)
			}
			loc, offset = abs(resp.Header.Get("Location")), last+1
			return nil
		})
	}
	retries += retry("PUT", func() error {
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+digest, nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			// A PUT whose answer was lost committed the upload already.
			if head, err := c.Head(base + "/v2/" + repo + "/blobs/" + digest); err == nil && head.StatusCode == 200 {
				return nil
			}
		}
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("PUT: %s", resp.Status)
		}
		return nil
	})
	resp, err := c.Get(base + "/v2/" + repo + "/blobs/" + digest)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	size, err := io.Copy(h, resp.Body)
	if err != nil || resp.StatusCode != 200 || fmt.Sprintf("sha256:%x", h.Sum(nil)) != digest || size != int64(len(data)) {
		t.Fatalf("GET the blob back: %s, %d bytes, %v; sha256:%x, want %s", resp.Status, size, err, h.Sum(nil), digest)
	}
	return retries
}

// TestGarbageCollection: spec.gc makes a CronJob that runs `registryd gc`
// with registryd's own identity, volume and RBAC under the restricted
// profile; a run asked for with the stevedore.dev/gc-request annotation
// frees the layer of a deleted image, keeps every tagged one pullable,
// records an Event, and its counts reach status.gc. Runs after TestREADME.
func TestGarbageCollection(t *testing.T) {
	n := setup(t)
	n.dumpOnFailure(t)
	host := n.registry(t, "demo", "registry-registry")
	var m struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	ref := host + "/demo/load:0"
	if err := json.Unmarshal([]byte(n.must(t, n.crane, "manifest", "--insecure", ref)), &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest of %s: %v", ref, err)
	}
	layer := m.Layers[len(m.Layers)-1].Digest // the random layer only load:0 has
	dgst := strings.TrimSpace(n.must(t, n.crane, "digest", "--insecure", ref))
	n.must(t, n.crane, "delete", "--insecure", host+"/demo/load@"+dgst)

	n.kc(t, "-n", "demo", "patch", "registry", "registry", "--type=merge", "-p",
		`{"spec":{"gc":{"schedule":"0 3 * * *","gracePeriod":"1s"}}}`)
	eventually(t, time.Minute, "the collector's CronJob", func() error {
		_, err := n.run(t, n.kubectl, "-n", "demo", "get", "cronjob", "registry-registry")
		return err
	})
	// A run asked for as the docs say; its outcome reaches status.gc from
	// the collector's termination message, through the real kubelet.
	n.kc(t, "-n", "demo", "annotate", "registry", "registry", "stevedore.dev/gc-request=now", "--overwrite")
	var run struct {
		Job            string `json:"job"`
		Succeeded      bool   `json:"succeeded"`
		Blobs          int64  `json:"blobs"`
		ReclaimedBytes int64  `json:"reclaimedBytes"`
		Message        string `json:"message"`
	}
	eventually(t, 3*time.Minute, "status.gc.lastRun", func() error {
		out, err := n.run(t, n.kubectl, "-n", "demo", "get", "registry", "registry", "-o", "jsonpath={.status.gc.lastRun}")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("none yet: %v", err)
		}
		return json.Unmarshal([]byte(out), &run)
	})
	t.Logf("status.gc.lastRun: %+v", run)
	if !run.Succeeded || run.Blobs == 0 || run.ReclaimedBytes == 0 || !strings.Contains(run.Message, "gc: deleted") {
		t.Errorf("status.gc.lastRun %+v: want a successful run that freed the deleted image's blobs", run)
	}
	t.Log(strings.TrimSpace(n.kc(t, "-n", "demo", "logs", "job/"+run.Job, "--tail", "3")))

	resp, err := http.Head("http://" + host + "/v2/demo/load/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("the deleted image's own layer %s after collection: %s, want 404", layer, resp.Status)
	}
	for _, tag := range []string{"/demo/hello:v1", "/demo/load:1"} {
		n.must(t, n.crane, "pull", "--insecure", host+tag, filepath.Join(t.TempDir(), "img.tar"))
	}
	eventually(t, 30*time.Second, "the GarbageCollected Event", func() error {
		out, err := n.run(t, n.kubectl, "-n", "demo", "get", "events", "--field-selector", "reason=GarbageCollected", "-o", "name")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("none: %v", err)
		}
		return nil
	})
}

// TestUninstall follows the README's Uninstall section, with one namespace
// deleted only after the operator is gone (the order that left namespaces
// stuck Terminating): nothing Stevedore made stays, and no namespace hangs.
// Runs last.
func TestUninstall(t *testing.T) {
	n := setup(t)
	n.dumpOnFailure(t)
	t.Log("a Registry whose namespace is deleted only after the operator is gone, with a pushed image")
	n.apply(t, `
apiVersion: v1
kind: Namespace
metadata: {name: late}
---
apiVersion: stevedore.dev/v1alpha1
kind: Registry
metadata: {name: registry, namespace: late}
spec:
  storage: {url: "mem://"}
  service: {type: NodePort}
  auth: {mode: none}
`)
	n.kc(t, "-n", "late", "wait", "--for=condition=Ready", "registry/registry", "--timeout=3m")
	host := n.registry(t, "late", "registry-registry")
	n.must(t, n.crane, "push", "--insecure", filepath.Join(n.dir, "pause.tar"), host+"/late/app:v1")
	eventually(t, 30*time.Second, "the Repository late/app", func() error {
		out, err := n.run(t, n.kubectl, "-n", "late", "get", "repositories", "-o", "name")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("no Repository yet: %q %v", out, err)
		}
		return nil
	})

	t.Log("the README: delete the Registries while the operator runs, then helm uninstall")
	for _, ns := range []string{"demo", "ident"} {
		n.kc(t, "-n", ns, "delete", "registries", "--all", "--wait", "--timeout=2m")
	}
	n.must(t, n.helm, "uninstall", "stevedore", "-n", "stevedore-system", "--wait", "--timeout", "3m")
	n.kc(t, "delete", "clusterrolebinding,clusterrole", "stevedore-registry-ident-registry-token-audience") // the test's own

	t.Log("every namespace goes, including the one whose Registry outlived the operator")
	for _, ns := range []string{"demo", "ident", "apps", "late", "stevedore-system"} {
		n.kc(t, "delete", "namespace", ns, "--wait=false")
	}
	eventually(t, 2*time.Minute, "the namespaces gone", func() error {
		out, err := n.run(t, n.kubectl, "get", "namespaces", "demo", "ident", "apps", "late", "stevedore-system",
			"--ignore-not-found", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("still there: %q %v", out, err)
		}
		return nil
	})
	n.kc(t, "delete", "crd", "registries.stevedore.dev", "repositories.stevedore.dev", "tagshards.stevedore.dev", "--timeout=1m")
	out := n.kc(t, "get", "clusterroles,clusterrolebindings,pv", "-o", "name")
	for _, line := range strings.Fields(out) {
		if strings.Contains(line, "stevedore") {
			t.Errorf("left behind: %s", line)
		}
	}
}
