package generated

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/stevedore-dev/stevedore/internal/testenv"
)

const (
	chartNamespace = "stevedore-system"
	chartRelease   = "stevedore"
	// kubeVersion is hack/envtest-assets.sh's K8S_VERSION.
	kubeVersion = "v1.37.2"
)

// helm is the helm binary from HELM (set by `make test`). Without it the
// chart tests skip on a developer machine and fail in CI.
func helm(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("HELM")
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("HELM is not set: run `make test` (it installs helm)")
		}
		t.Skip("HELM is not set: run `make test`, or HELM=$(make -s helm; echo ~/.cache/stevedore/tools/helm-v3.22.0)")
	}
	return bin
}

// runHelm runs helm on the chart and returns its stdout and stderr; it
// fails the test unless the exit status is what wantOK says.
func runHelm(t *testing.T, wantOK bool, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	cmd.Dir = testenv.RepoRoot()
	// helm keeps caches and config under HOME; keep the test's apart.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if wantOK && err != nil {
		t.Fatalf("helm %v: %v\n%s\n%s", args, err, stdout.String(), stderr.String())
	}
	if !wantOK && err == nil {
		t.Fatalf("helm %v succeeded, want a failure:\n%s", args, stdout.String())
	}
	return stdout.String(), stderr.String()
}

// renderChart is `helm template` of the chart as `helm install stevedore
// charts/stevedore -n stevedore-system` would install it, CRDs included.
func renderChart(t *testing.T, set ...string) string {
	t.Helper()
	// A go-installed helm believes in Kubernetes v1.20 unless told; this is
	// the envtest API server's version.
	args := []string{"template", chartRelease, "charts/stevedore", "--namespace", chartNamespace, "--include-crds", "--kube-version", kubeVersion}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, _ := runHelm(t, true, args...)
	return out
}

// splitDocs cuts a multi-document YAML stream into its non-empty documents.
func splitDocs(stream string) []string {
	var docs []string
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(stream, -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(doc string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(doc))
	for sc.Scan() {
		if !strings.HasPrefix(strings.TrimSpace(sc.Text()), "#") {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return b.String()
}

type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
}

// byKind parses the rendered documents and indexes them by kind (the first
// of each kind) and by kind/name.
func byKind(t *testing.T, docs []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, d := range docs {
		var o object
		if err := yaml.Unmarshal([]byte(d), &o); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, d)
		}
		if o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("rendered document without kind or name:\n%s", d)
		}
		if _, dup := m[o.Kind]; !dup {
			m[o.Kind] = d
		}
		m[o.Kind+"/"+o.Metadata.Name] = d
	}
	return m
}

func mustParse(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatalf("parsing %T: %v\n%s", into, err, doc)
	}
}

func readFile(t *testing.T, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{testenv.RepoRoot()}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChartFilesAreGenerated fails when the chart's CRDs or RBAC rules or
// its versions drift from what the project generates and builds.
func TestChartFilesAreGenerated(t *testing.T) {
	root := testenv.RepoRoot()
	t.Run("crds are config/crd/bases", func(t *testing.T) {
		compareDirs(t, filepath.Join(root, "charts", "stevedore", "crds"), filepath.Join(root, "config", "crd", "bases"), true)
	})
	t.Run("versions follow the Makefile", func(t *testing.T) {
		m := regexp.MustCompile(`(?m)^VERSION \?= (\S+)$`).FindSubmatch(readFile(t, "Makefile"))
		if m == nil {
			t.Fatal("no VERSION in the Makefile")
		}
		var chart struct {
			Version    string `json:"version"`
			AppVersion string `json:"appVersion"`
		}
		if err := yaml.Unmarshal(readFile(t, "charts", "stevedore", "Chart.yaml"), &chart); err != nil {
			t.Fatal(err)
		}
		if chart.Version != string(m[1]) || chart.AppVersion != string(m[1]) {
			t.Errorf("Chart.yaml version %q appVersion %q, Makefile VERSION %s", chart.Version, chart.AppVersion, m[1])
		}
	})
	t.Run("rendered ClusterRole has the generated rules", func(t *testing.T) {
		var generated, rendered rbacv1.ClusterRole
		mustParse(t, string(readFile(t, "config", "rbac", "role.yaml")), &generated)
		mustParse(t, byKind(t, splitDocs(renderChart(t)))["ClusterRole/"+chartRelease+"-manager-role"], &rendered)
		if len(generated.Rules) == 0 || !reflect.DeepEqual(generated.Rules, rendered.Rules) {
			t.Errorf("the chart's ClusterRole rules differ from config/rbac/role.yaml: run `make manifests`\nchart: %+v\ngenerated: %+v", rendered.Rules, generated.Rules)
		}
	})
	t.Run("metrics-reader ClusterRole is config/rbac's", func(t *testing.T) {
		var base, rendered rbacv1.ClusterRole
		mustParse(t, string(readFile(t, "config", "rbac", "metrics_reader_role.yaml")), &base)
		mustParse(t, byKind(t, splitDocs(renderChart(t)))["ClusterRole/"+chartRelease+"-metrics-reader"], &rendered)
		want := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}
		if !reflect.DeepEqual(base.Rules, want) || !reflect.DeepEqual(rendered.Rules, want) {
			t.Errorf("metrics-reader rules: config/rbac %+v, chart %+v, want %+v", base.Rules, rendered.Rules, want)
		}
	})
}

// TestChartLint runs `helm lint --strict` with the default values and with
// every optional part on, and checks values.schema.json refuses bad values.
func TestChartLint(t *testing.T) {
	for name, set := range map[string][]string{
		"defaults":                nil,
		"registry and monitoring": {"registry.enabled=true", "registry.auth.mode=none", "metrics.serviceMonitor.enabled=true"},
		"registry on s3 with ingress": {"registry.enabled=true", "registry.storage.url=s3://images?region=eu-west-1",
			"registry.storage.secretName=s3-credentials", "registry.ingress.enabled=true", "registry.ingress.host=registry.example.com",
			"registry.service.type=NodePort"},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", "charts/stevedore"}
			for _, s := range set {
				args = append(args, "--set", s)
			}
			out, _ := runHelm(t, true, args...)
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint printed:\n%s", out)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
	for name, c := range map[string]struct{ set, want string }{
		"auth mode":       {"registry.auth.mode=open", "/registry/auth/mode"},
		"storage scheme":  {"registry.storage.url=http://bucket", "/registry/storage/url"},
		"registry name":   {"registry.name=My_Registry", "/registry/name"},
		"replicas type":   {"operator.replicas=two", "/operator/replicas"},
		"unknown value":   {"registry.storageClass=fast", "storageClass"},
		"htpasswd secret": {"registry.auth.mode=htpasswd", "htpasswdSecretName"},
	} {
		t.Run("schema refuses "+name, func(t *testing.T) {
			out, stderr := runHelm(t, false, "template", "x", "charts/stevedore", "--kube-version", kubeVersion, "--set", c.set)
			if !strings.Contains(out+stderr, "values don't meet the specifications of the schema") || !strings.Contains(out+stderr, c.want) {
				t.Errorf("helm template --set %s failed without naming %q:\n%s%s", c.set, c.want, out, stderr)
			}
		})
	}
}

// TestChartRestrictedPodSecurity checks the rendered operator Deployment
// against the restricted Pod Security profile, and that it runs the operator
// as config/manager does (flags, env, security context).
func TestChartRestrictedPodSecurity(t *testing.T) {
	var d appsv1.Deployment
	mustParse(t, byKind(t, splitDocs(renderChart(t, "image.tag=1.2.3")))["Deployment"], &d)
	pod := d.Spec.Template.Spec
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("want one container, got %d (+%d init)", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("container without securityContext")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("allowPrivilegeEscalation is not false")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("readOnlyRootFilesystem is not true")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0:
		t.Errorf("capabilities %+v: want drop [ALL], add none", sc.Capabilities)
	case sc.Privileged != nil && *sc.Privileged, sc.RunAsUser != nil && *sc.RunAsUser == 0:
		t.Error("container is privileged or runs as root")
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC || len(pod.Volumes) != 0 {
		t.Errorf("pod uses host namespaces or volumes: %+v", pod)
	}

	const image = "ghcr.io/stevedore-dev/stevedore:1.2.3"
	if c.Image != image {
		t.Errorf("image %q, want %q", c.Image, image)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if env["STEVEDORE_IMAGE"].Value != image {
		t.Errorf("STEVEDORE_IMAGE %q, want the chart's image %q (registryd's default)", env["STEVEDORE_IMAGE"].Value, image)
	}
	if f := env["POD_NAMESPACE"].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE is not the pod's namespace from the downward API: %+v", env["POD_NAMESPACE"])
	}
	if pod.ServiceAccountName != chartRelease+"-operator" {
		t.Errorf("serviceAccountName %q", pod.ServiceAccountName)
	}

	// The kustomize base runs the same process the same way.
	var base appsv1.Deployment
	for _, doc := range splitDocs(string(readFile(t, "config", "manager", "manager.yaml"))) {
		if strings.Contains(doc, "kind: Deployment") {
			mustParse(t, doc, &base)
		}
	}
	if len(base.Spec.Template.Spec.Containers) != 1 {
		t.Fatal("config/manager/manager.yaml holds no operator Deployment")
	}
	bc := base.Spec.Template.Spec.Containers[0]
	for _, arg := range bc.Args {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("the chart's operator lacks %s, which config/manager passes", arg)
		}
	}
	if !slices.Equal(c.Command, bc.Command) || !reflect.DeepEqual(c.SecurityContext, bc.SecurityContext) ||
		!reflect.DeepEqual(pod.SecurityContext, base.Spec.Template.Spec.SecurityContext) || !reflect.DeepEqual(c.Ports, bc.Ports) {
		t.Error("the chart's operator container differs from config/manager's in command, ports or security context")
	}
	for _, e := range bc.Env {
		if _, ok := env[e.Name]; !ok {
			t.Errorf("the chart's operator lacks env %s", e.Name)
		}
	}

	// A startup probe holds readiness and liveness back while the manager
	// starts, and every probe uses the plain-HTTP probe port, never the
	// authenticated metrics port.
	if c.StartupProbe == nil {
		t.Error("the operator has no startup probe")
	}
	for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "probes" {
			t.Errorf("probe %+v: want an HTTP GET on port probes", p)
		}
	}
	if !reflect.DeepEqual(c.StartupProbe, bc.StartupProbe) || !reflect.DeepEqual(c.ReadinessProbe, bc.ReadinessProbe) || !reflect.DeepEqual(c.LivenessProbe, bc.LivenessProbe) {
		t.Error("the chart's operator probes differ from config/manager's")
	}
}

// TestChartServiceMonitor checks the optional ServiceMonitor scrapes the
// metrics Service the chart renders (the envtest API server has no
// monitoring.coreos.com CRDs, so it is checked on the rendered objects).
func TestChartServiceMonitor(t *testing.T) {
	if _, ok := byKind(t, splitDocs(renderChart(t)))["ServiceMonitor"]; ok {
		t.Error("a ServiceMonitor is rendered by default; it needs the Prometheus Operator's CRDs")
	}
	objs := byKind(t, splitDocs(renderChart(t, "metrics.serviceMonitor.enabled=true")))
	var sm struct {
		APIVersion string `json:"apiVersion"`
		Spec       struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			NamespaceSelector struct {
				MatchNames []string `json:"matchNames"`
			} `json:"namespaceSelector"`
			Endpoints []struct {
				Port            string `json:"port"`
				Path            string `json:"path"`
				Scheme          string `json:"scheme"`
				BearerTokenFile string `json:"bearerTokenFile"`
				TLSConfig       struct {
					InsecureSkipVerify bool `json:"insecureSkipVerify"`
				} `json:"tlsConfig"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(objs["ServiceMonitor"]), &sm); err != nil || sm.APIVersion != "monitoring.coreos.com/v1" {
		t.Fatalf("ServiceMonitor %v:\n%s", err, objs["ServiceMonitor"])
	}
	var svc corev1.Service
	mustParse(t, objs["Service"], &svc)
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, the metrics Service has %q", k, v, svc.Labels[k])
		}
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" ||
		len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{chartNamespace}) {
		t.Errorf("ServiceMonitor endpoints %+v do not scrape Service ports %+v", sm.Spec.Endpoints, svc.Spec.Ports)
	}
	// The operator serves metrics over HTTPS (self-signed) to a token
	// allowed `get /metrics`: Prometheus must send its own.
	if e := sm.Spec.Endpoints[0]; e.Scheme != "https" || e.BearerTokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" || !e.TLSConfig.InsecureSkipVerify {
		t.Errorf("ServiceMonitor endpoint %+v: want https, the ServiceAccount token and insecureSkipVerify", e)
	}
	var d appsv1.Deployment
	mustParse(t, objs["Deployment"], &d)
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("metrics Service selects %s=%s, the operator pod has %q", k, v, d.Spec.Template.Labels[k])
		}
	}
}

// TestChartApplies applies `helm template` of the chart, with a first
// Registry, to a real API server with the real kubectl and checks every
// object is accepted — in a namespace that enforces the restricted Pod
// Security profile, with the admission plugin's warnings turned on.
func TestChartApplies(t *testing.T) {
	rendered := renderChart(t, "registry.enabled=true", "registry.auth.mode=none")
	docs := splitDocs(rendered)
	objs := byKind(t, docs)
	for _, kind := range []string{"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "Registry"} {
		if _, ok := objs[kind]; !ok {
			t.Errorf("the chart renders no %s", kind)
		}
	}

	kubeconfig, run := startAPIServer(t)
	run("", true, "create", "namespace", chartNamespace)
	run("", true, "label", "namespace", chartNamespace,
		"pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted")

	// The Pod Security admission plugin is live: a Deployment without the
	// chart's security context draws its warning.
	var bare appsv1.Deployment
	mustParse(t, objs["Deployment"], &bare)
	bare.Spec.Template.Spec.SecurityContext = nil
	bare.Spec.Template.Spec.Containers[0].SecurityContext = nil
	bareYAML, err := yaml.Marshal(&bare)
	if err != nil {
		t.Fatal(err)
	}
	if out := run(string(bareYAML), true, "apply", "--dry-run=server", "-f", "-"); !strings.Contains(out, "would violate PodSecurity") {
		t.Fatalf("a Deployment without a security context drew no Pod Security warning:\n%s", out)
	}

	// Applied for real, CRDs first as helm installs them, then the rest.
	out := run(rendered, true, "apply", "--server-side", "-f", "-")
	if strings.Contains(out, "PodSecurity") || strings.Contains(strings.ToLower(out), "warning") {
		t.Errorf("applying the chart drew warnings:\n%s", out)
	}
	applied := strings.Count(out, " serverside-applied")
	if applied != len(docs) {
		t.Errorf("%d of %d rendered objects applied:\n%s", applied, len(docs), out)
	}
	t.Logf("%d objects accepted by the API server:\n%s", applied, strings.TrimSpace(out))

	// The objects landed where the chart says, and the operator's
	// ServiceAccount holds what its reconcilers need.
	run("", true, "-n", chartNamespace, "get", "deployment/stevedore-operator", "service/stevedore-operator-metrics",
		"serviceaccount/stevedore-operator", "registry/registry")
	sa := "--as=system:serviceaccount:" + chartNamespace + ":stevedore-operator"
	// can-i prints warnings for cluster-scoped resources first; the answer is the last line.
	answer := func(out string) string {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return strings.TrimSpace(lines[len(lines)-1])
	}
	for _, can := range [][]string{
		{"create", "deployments.apps", "-n", "team-a"},
		{"patch", "registries.stevedore.dev", "--subresource=status", "-n", "team-a"},
		{"create", "leases.coordination.k8s.io", "-n", chartNamespace},
		{"create", "clusterrolebindings.rbac.authorization.k8s.io"},
		{"bind", "clusterroles.rbac.authorization.k8s.io/system:auth-delegator"},
	} {
		if out := run("", true, append([]string{"auth", "can-i", sa}, can...)...); answer(out) != "yes" {
			t.Errorf("the operator's ServiceAccount cannot %v: %s", can, out)
		}
	}
	for _, cannot := range [][]string{
		{"get", "nodes"},
		{"create", "pods", "-n", "team-a"},
		{"bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin"},
		// Leader election only in its own namespace; Secrets only read
		// one by one and created.
		{"create", "leases.coordination.k8s.io", "-n", "team-a"},
		{"list", "secrets", "-n", "team-a"},
		{"update", "secrets", "-n", "team-a"},
		{"delete", "deployments.apps", "-n", "team-a"},
	} {
		if out := run("", false, append([]string{"auth", "can-i", sa}, cannot...)...); answer(out) != "no" {
			t.Errorf("the operator's ServiceAccount may %v: %s", cannot, out)
		}
	}

	// The uninstall hook's ServiceAccount may do what `manager
	// delete-registries` does, in the release namespace, and nothing more.
	hook := "--as=system:serviceaccount:" + chartNamespace + ":stevedore-uninstall"
	for _, can := range [][]string{
		{"list", "registries.stevedore.dev", "-n", chartNamespace},
		{"delete", "registries.stevedore.dev", "-n", chartNamespace},
		{"get", "clusterrolebindings.rbac.authorization.k8s.io/stevedore:" + chartNamespace + ":registry:auth-delegator"},
	} {
		if out := run("", true, append([]string{"auth", "can-i", hook}, can...)...); answer(out) != "yes" {
			t.Errorf("the uninstall hook's ServiceAccount cannot %v: %s", can, out)
		}
	}
	for _, cannot := range [][]string{
		{"delete", "registries.stevedore.dev", "-n", "team-a"},
		{"get", "clusterrolebindings.rbac.authorization.k8s.io/cluster-admin"},
		{"delete", "repositories.stevedore.dev", "-n", chartNamespace},
	} {
		if out := run("", false, append([]string{"auth", "can-i", hook}, cannot...)...); answer(out) != "no" {
			t.Errorf("the uninstall hook's ServiceAccount may %v: %s", cannot, out)
		}
	}

	// And the documented path itself: helm install (a second release, in
	// its own namespace, beside the objects above), its NOTES, uninstall.
	out, _ = runHelm(t, true, "install", "second", "charts/stevedore", "--kubeconfig", kubeconfig,
		"-n", "second-system", "--create-namespace", "--set", "registry.enabled=true", "--set", "registry.auth.mode=none")
	for _, want := range []string{"STATUS: deployed", "kubectl -n second-system wait --for=condition=Ready registry/registry", "port-forward svc/registry-registry",
		// --create-namespace makes a namespace without Pod Security labels.
		"kubectl label namespace second-system pod-security.kubernetes.io/enforce=restricted"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install printed no %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "credentials yet") {
		t.Errorf("the NOTES say an auth mode does not check credentials:\n%s", out)
	}
	run("", true, "-n", "second-system", "get", "deployment/second-stevedore-operator", "registry/registry",
		"clusterrole/second-stevedore-manager-role")
	// --no-hooks: the pre-delete hook is a Job, and this API server has no
	// node to run it (TestChartUninstallHook checks it, the real-node e2e
	// runs it).
	runHelm(t, true, "uninstall", "second", "--kubeconfig", kubeconfig, "-n", "second-system", "--wait", "--no-hooks")
	if out := run("", false, "get", "clusterrole/second-stevedore-manager-role"); !strings.Contains(out, "NotFound") {
		t.Errorf("helm uninstall left the ClusterRole: %s", out)
	}
}

// TestChartUninstallHook: with registry.enabled, `helm uninstall` first runs
// a pre-delete Job, `manager delete-registries`, selecting exactly the
// chart's Registry, so the operator is still there while that Registry goes.
func TestChartUninstallHook(t *testing.T) {
	if _, ok := byKind(t, splitDocs(renderChart(t)))["Job"]; ok {
		t.Error("an uninstall Job is rendered without registry.enabled: there is nothing for it to delete")
	}
	objs := byKind(t, splitDocs(renderChart(t, "registry.enabled=true", "image.tag=1.2.3")))
	var job batchv1.Job
	mustParse(t, objs["Job"], &job)
	if job.Annotations["helm.sh/hook"] != "pre-delete" {
		t.Errorf("the Job's hook is %q, want pre-delete", job.Annotations["helm.sh/hook"])
	}
	var reg struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal([]byte(objs["Registry"]), &reg); err != nil {
		t.Fatal(err)
	}
	c := job.Spec.Template.Spec.Containers[0]
	if !slices.Equal(c.Command, []string{"/manager"}) || len(c.Args) == 0 || c.Args[0] != "delete-registries" ||
		c.Image != "ghcr.io/stevedore-dev/stevedore:1.2.3" {
		t.Fatalf("the Job runs %v %v from %s, want /manager delete-registries from the chart's image", c.Command, c.Args, c.Image)
	}
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags[k] = v
	}
	sel, err := labels.Parse(flags["selector"])
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(reg.Metadata.Labels)) || flags["namespace"] != chartNamespace {
		t.Errorf("the Job's --namespace=%s --selector=%s (%v) does not select the chart's Registry (labels %v)",
			flags["namespace"], flags["selector"], err, reg.Metadata.Labels)
	}
	if sel.Matches(labels.Set{"app.kubernetes.io/instance": "other", "app.kubernetes.io/component": "registry"}) {
		t.Errorf("the selector %s also matches another release's Registry", sel)
	}
	if job.Spec.Template.Spec.ServiceAccountName != chartRelease+"-uninstall" {
		t.Errorf("the Job runs as %q", job.Spec.Template.Spec.ServiceAccountName)
	}
}

// TestChartKnobs: each of the chart's operator settings reaches the object
// it is for, and the defaults stay the restricted profile
// (TestChartRestrictedPodSecurity).
func TestChartKnobs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		set   []string
		check func(t *testing.T, objs map[string]string, d *appsv1.Deployment)
	}{
		{"serviceAccount.create=false with a name", []string{"serviceAccount.create=false", "serviceAccount.name=platform-operator"},
			func(t *testing.T, objs map[string]string, d *appsv1.Deployment) {
				if _, ok := objs["ServiceAccount"]; ok {
					t.Error("a ServiceAccount was rendered")
				}
				if d.Spec.Template.Spec.ServiceAccountName != "platform-operator" {
					t.Errorf("serviceAccountName %q", d.Spec.Template.Spec.ServiceAccountName)
				}
				if !strings.Contains(objs["ClusterRoleBinding"], "name: platform-operator") || !strings.Contains(objs["RoleBinding"], "name: platform-operator") {
					t.Error("the bindings do not name the given ServiceAccount")
				}
			}},
		{"rbac.create=false", []string{"rbac.create=false"},
			func(t *testing.T, objs map[string]string, _ *appsv1.Deployment) {
				for _, k := range []string{"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
					if _, ok := objs[k]; ok {
						t.Errorf("a %s was rendered", k)
					}
				}
			}},
		{"extraArgs and extraEnv", []string{"operator.extraArgs={--max-concurrent-reconciles=4}", "operator.extraEnv[0].name=GOMEMLIMIT", "operator.extraEnv[0].value=200MiB"},
			func(t *testing.T, _ map[string]string, d *appsv1.Deployment) {
				c := d.Spec.Template.Spec.Containers[0]
				if !slices.Contains(c.Args, "--max-concurrent-reconciles=4") {
					t.Errorf("args %v", c.Args)
				}
				if !slices.Contains(c.Env, corev1.EnvVar{Name: "GOMEMLIMIT", Value: "200MiB"}) {
					t.Errorf("env %v", c.Env)
				}
			}},
		{"security contexts replaced", []string{"operator.podSecurityContext.runAsUser=1000650000", "operator.securityContext.readOnlyRootFilesystem=false"},
			func(t *testing.T, _ map[string]string, d *appsv1.Deployment) {
				if u := d.Spec.Template.Spec.SecurityContext.RunAsUser; u == nil || *u != 1000650000 {
					t.Errorf("pod runAsUser %v", u)
				}
				if r := d.Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem; r == nil || *r {
					t.Errorf("readOnlyRootFilesystem %v", r)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := byKind(t, splitDocs(renderChart(t, tc.set...)))
			var d appsv1.Deployment
			mustParse(t, objs["Deployment"], &d)
			tc.check(t, objs, &d)
		})
	}
}
