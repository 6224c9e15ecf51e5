package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/registryd/auth"
)

const workloadIdentityDoc = "docs/workload-identity.md"

// credentialProviderBin is CREDENTIAL_PROVIDER (absolute, or relative to
// the repository root), else stevedore-credential-provider built into a
// temp dir.
func credentialProviderBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CREDENTIAL_PROVIDER"); bin != "" {
		if !filepath.IsAbs(bin) {
			bin, _ = filepath.Abs(filepath.Join("..", "..", bin))
		}
		return bin
	}
	bin := filepath.Join(t.TempDir(), "stevedore-credential-provider")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/stevedore-dev/stevedore/cmd/stevedore-credential-provider")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building stevedore-credential-provider: %v\n%s", err, out)
	}
	return bin
}

// runPlugin runs the plugin as the kubelet does: the request on stdin, the
// configuration's args, the answer on stdout.
func runPlugin(t *testing.T, bin string, args []string, image, token string) (*credentialproviderv1.CredentialProviderResponse, string, error) {
	t.Helper()
	req, err := json.Marshal(credentialproviderv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: credentialproviderv1.SchemeGroupVersion.String(), Kind: "CredentialProviderRequest"},
		Image:    image, ServiceAccountToken: token,
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(req), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, stderr.String(), err
	}
	var resp credentialproviderv1.CredentialProviderResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		t.Fatalf("the plugin's answer: %v\n%s", err, stdout.String())
	}
	return &resp, stderr.String(), nil
}

// TestCredentialProvider: a workload pulls with its own identity, with the
// objects and kubelet configuration of docs/workload-identity.md. Against a
// real API server running the Node authorizer and NodeRestriction (as
// clusters do), the test does what the kubelet does for a pod being started
// (KEP-4412): as system:node:node-1 it reads the pod's ServiceAccount and
// asks for a token bound to the pod, for the Registry's audience — refused
// until the page's ClusterRole is applied — then runs the built
// stevedore-credential-provider with the page's args, and crane pulls with
// the user name and password it answered. The pod whose ServiceAccount the
// page's Role lets pull gets the image; the other gets 403 DENIED, and
// registryd's log says who was denied what.
func TestCredentialProvider(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	crane := testutil.Client(t, "crane")
	plugin := credentialProviderBin(t)
	ctx := t.Context()
	// The page's example names: the README's Registry.
	const ns, registry, node, repo = "demo", "registry", "node-1", "team/app"
	audience := auth.DefaultAudience(ns, registry)
	doc := testutil.DocYAML(t, workloadIdentityDoc)
	apply := func(kind string) {
		t.Helper()
		for _, o := range testutil.DocKind(t, doc, kind) {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(o.JSON); err != nil {
				t.Fatal(err)
			}
			if err := env.Client.Create(ctx, u); err != nil {
				t.Fatalf("applying the page's %s %s: %v", kind, u.GetName(), err)
			}
		}
	}

	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &v1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: registry},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}); err != nil {
		t.Fatal(err)
	}
	// puller, its Role and RoleBinding: the page's. stranger has no RBAC.
	// (The page's fixed-nodePort Service is applied so the API server
	// checks it; no kube-proxy runs here to serve it.)
	apply("ServiceAccount")
	apply("Role")
	apply("RoleBinding")
	apply("Service")
	for _, sa := range []string{"stranger", "pusher"} {
		if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil {
			t.Fatal(err)
		}
	}
	grant(t, env, ns, "pusher-push", "pusher", []string{"pull", "push"}, registry)

	// The kubelet's configuration from the page, for its args.
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(testutil.DocKind(t, doc, "CredentialProviderConfig")[0].JSON, &cfg); err != nil {
		t.Fatal(err)
	}
	provider := cfg.Providers[0]
	if provider.TokenAttributes.ServiceAccountTokenAudience != audience {
		t.Fatalf("the page's audience %q, want %q", provider.TokenAttributes.ServiceAccountTokenAudience, audience)
	}

	nodeUser, err := env.AddUser(envtest.User{Name: "system:node:" + node, Groups: []string{"system:nodes"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubelet := kubernetes.NewForConfigOrDie(nodeUser.Config())
	// The pods being started on node-1 (no kubelet runs here: the test is
	// the kubelet).
	pods := map[string]*corev1.Pod{}
	for _, sa := range []string{"puller", "stranger"} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa + "-app"},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
				Containers: []corev1.Container{{Name: "app", Image: "placeholder.invalid/" + repo + ":v1"}}},
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pods[sa] = pod
	}
	// kubeletToken asks for a token as the kubelet does for a credential
	// provider with tokenAttributes: as the node, bound to the pod, for the
	// configured audience, with the ServiceAccount's UID.
	kubeletToken := func(sa string) (string, error) {
		acct, err := kubelet.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		pod := pods[sa]
		tr, err := kubelet.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
			ObjectMeta: metav1.ObjectMeta{UID: acct.UID},
			Spec: authnv1.TokenRequestSpec{
				Audiences:      []string{provider.TokenAttributes.ServiceAccountTokenAudience},
				BoundObjectRef: &authnv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		return tr.Status.Token, nil
	}
	// The Node authorizer's graph and NodeRestriction's pod lister catch up
	// with new pods asynchronously: retry until the answer is final.
	eventually := func(what string, done func(error) bool, f func() error) error {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := f()
			if done(err) {
				return err
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: still %v after 30 s", what, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	notAuthorizedForAudience := regexp.MustCompile(`is not authorized to request tokens for audience "` + regexp.QuoteMeta(audience) + `"`)
	err = eventually("the node's token request before the ClusterRole", func(err error) bool {
		return err != nil && apierrors.IsForbidden(err) && notAuthorizedForAudience.MatchString(err.Error())
	}, func() error { _, err := kubeletToken("puller"); return err })
	t.Logf("without the page's ClusterRole, the kubelet is told: %v", err)

	apply("ClusterRole")
	apply("ClusterRoleBinding")
	tokens := map[string]string{}
	for _, sa := range []string{"puller", "stranger"} {
		_ = eventually("the node's token request for "+sa, func(err error) bool { return err == nil }, func() error {
			tok, err := kubeletToken(sa)
			tokens[sa] = tok
			return err
		})
	}

	layer := filepath.Join(t.TempDir(), "layer.tar")
	writeLayerTar(t, layer, map[string]string{"w.txt": "pulled with the pod's own identity\n"})
	pushToken := strings.TrimSpace(kubectl(t, env, "create", "token", "pusher", "-n", ns, "--audience", audience))
	for _, challenge := range []string{"basic", "bearer"} {
		t.Run(challenge, func(t *testing.T) {
			reg := startRegistryd(t, "file://"+t.TempDir(), "--auth", "kubernetes", "--auth-challenge", challenge,
				"--registry", registry, "--namespace", ns, "--kubeconfig", kube.kubeconfig)
			image := reg.host + "/" + repo + ":v1"
			login := func(user, pass string, args ...string) (string, error) {
				h := t.TempDir()
				if out, err := try(h, "", crane, "auth", "login", reg.host, "-u", user, "-p", pass); err != nil {
					return out, err
				}
				return try(h, "", crane, append(args, "--insecure")...)
			}
			out, err := login("pusher", pushToken, "append", "-f", layer, "-t", image)
			expect(t, "pusher pushes "+repo, out, err, nil)

			_, stderr, err := runPlugin(t, plugin, provider.Args, image, "")
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr, "no serviceAccountToken") {
				t.Errorf("the plugin without a token: %v, stderr %q; want exit 1 saying no serviceAccountToken", err, stderr)
			}

			for _, tc := range []struct {
				sa   string
				want *regexp.Regexp
			}{{"puller", nil}, {"stranger", says403}} {
				resp, stderr, err := runPlugin(t, plugin, provider.Args, image, tokens[tc.sa])
				if err != nil {
					t.Fatalf("the plugin for %s: %v\n%s", tc.sa, err, stderr)
				}
				checkAnswer(t, resp, reg.host, tokens[tc.sa])
				creds := resp.Auth[reg.host]
				if want := ns + "/" + tc.sa; creds.Username != want {
					t.Errorf("user name %q, want %q", creds.Username, want)
				}
				out, err := login(creds.Username, creds.Password, "pull", image, filepath.Join(t.TempDir(), "img.tar"))
				expect(t, tc.sa+" pulls "+repo+" with the plugin's answer", out, err, tc.want)
			}

			logb, _ := os.ReadFile(reg.log)
			denied := regexp.MustCompile(`msg="access denied" user=system:serviceaccount:` + ns + `:stranger access="pull ` + repo + `"`)
			if !denied.Match(logb) {
				t.Errorf("registryd's log has no line matching %s:\n%s", denied, tail(string(logb), 3000))
			}
			if regexp.MustCompile(`access denied.*user=system:serviceaccount:` + ns + `:puller`).Match(logb) {
				t.Error("registryd's log denies puller something")
			}
			for sa, tok := range tokens {
				if strings.Contains(string(logb), tok) {
					t.Errorf("registryd's log contains %s's token", sa)
				}
			}
		})
	}
}

// checkAnswer: the plugin's answer is a v1 response keyed by the registry
// host, carrying the token, cached per registry for less than the token
// has left.
func checkAnswer(t *testing.T, resp *credentialproviderv1.CredentialProviderResponse, host, token string) {
	t.Helper()
	if resp.APIVersion != credentialproviderv1.SchemeGroupVersion.String() || resp.Kind != "CredentialProviderResponse" {
		t.Errorf("answer is %s %s", resp.APIVersion, resp.Kind)
	}
	if resp.CacheKeyType != credentialproviderv1.RegistryPluginCacheKeyType {
		t.Errorf("cacheKeyType %q", resp.CacheKeyType)
	}
	if len(resp.Auth) != 1 || resp.Auth[host].Password != token {
		t.Errorf("auth keys %d, want one for %s holding the token", len(resp.Auth), host)
	}
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil || claims.ExpiresAt == nil {
		t.Fatalf("the API server's token: %v", err)
	}
	left := time.Until(claims.ExpiresAt.Time)
	if d := resp.CacheDuration; d == nil || d.Duration <= 0 || d.Duration > left {
		t.Errorf("cacheDuration %v with the token expiring in %v", d, left.Round(time.Second))
	}
}
