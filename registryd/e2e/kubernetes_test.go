package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/registryd/auth"
)

// kube is the package's one API server, started by the first test that
// needs it and stopped by TestMain.
var kube struct {
	once       sync.Once
	env        *testenv.Env
	kubeconfig string
	err        error
}

func kubeEnv(t *testing.T) *testenv.Env {
	t.Helper()
	kube.once.Do(func() {
		// Authorization and admission of nodes as clusters run them, so a
		// test acting as a kubelet is held to what a kubelet may do; they
		// change nothing for the admin kubeconfig the other tests use.
		kube.env, kube.err = testenv.StartWith(testenv.Options{APIServerFlags: map[string][]string{
			"authorization-mode":       {"Node,RBAC"},
			"enable-admission-plugins": {"NodeRestriction"},
		}})
		if kube.err != nil {
			return
		}
		dir, err := os.MkdirTemp("", "e2e-kube")
		if err != nil {
			kube.err = err
			return
		}
		kube.kubeconfig, kube.err = kube.env.WriteKubeconfig(dir)
	})
	if kube.err != nil {
		t.Fatal(kube.err)
	}
	return kube.env
}

func stopKube() {
	if kube.env != nil {
		_ = kube.env.Stop()
		_ = os.RemoveAll(filepath.Dir(kube.kubeconfig))
	}
}

// kubectl runs the real kubectl against the package's API server.
func kubectl(t *testing.T, env *testenv.Env, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(env.AssetsDir(), "kubectl"), append([]string{"--kubeconfig", kube.kubeconfig}, args...)...).Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// grant binds ServiceAccount sa to verbs on the named repositories
// (every repository when names is empty).
func grant(t *testing.T, env *testenv.Env, ns, name, sa string, verbs []string, registry string, repos ...string) {
	t.Helper()
	rule := rbacv1.PolicyRule{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"repositories"}, Verbs: verbs}
	for _, r := range repos {
		rule.ResourceNames = append(rule.ResourceNames, v1.RepositoryObjectName(registry, r))
	}
	ctx := t.Context()
	if err := env.Client.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Rules: []rbacv1.PolicyRule{rule}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}); err != nil {
		t.Fatal(err)
	}
}

// TestKubernetesAuth: registryd in kubernetes mode against a real API
// server. ServiceAccount tokens from `kubectl create token` are crane
// passwords; RBAC on repositories.stevedore.dev decides. A ServiceAccount
// allowed to pull one repository pulls it, cannot push it, cannot pull
// another; a RoleBinding for push lets its next push through within the
// decision cache's TTL.
func TestKubernetesAuth(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	crane := testutil.Client(t, "crane")
	const ns, registry, cacheTTL = "kubeauth", "reg", 2 * time.Second
	if err := env.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"admin", "ci"} {
		if err := env.Client.Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil {
			t.Fatal(err)
		}
	}
	// The tag store keeps tags in Repositories of this Registry (no
	// operator runs here: the object is all registryd needs).
	if err := env.Client.Create(t.Context(), &v1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: registry},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}); err != nil {
		t.Fatal(err)
	}
	grant(t, env, ns, "admin-all", "admin", []string{"pull", "push", "delete", "list"}, registry)
	grant(t, env, ns, "ci-pull-app", "ci", []string{"pull"}, registry, "team/app-basic", "team/app-bearer")
	// Tokens for the Registry's own audience, registryd's default.
	aud := auth.DefaultAudience(ns, registry)
	adminToken := strings.TrimSpace(kubectl(t, env, "create", "token", "admin", "-n", ns, "--audience", aud))
	ciToken := strings.TrimSpace(kubectl(t, env, "create", "token", "ci", "-n", ns, "--audience", aud))

	layer := filepath.Join(t.TempDir(), "layer.tar")
	writeLayerTar(t, layer, map[string]string{"k.txt": "kubernetes auth\n"})
	for _, challenge := range []string{"basic", "bearer"} {
		t.Run(challenge, func(t *testing.T) {
			reg := startRegistryd(t, "file://"+t.TempDir(), "--auth", "kubernetes", "--auth-challenge", challenge,
				"--registry", registry, "--namespace", ns, "--kubeconfig", kube.kubeconfig, "--auth-cache-ttl", cacheTTL.String())
			repo := func(name string) string { return reg.host + "/" + name + "-" + challenge }
			as := func(token string, args ...string) (string, error) {
				h := t.TempDir()
				if token != "" {
					// Any user name: the password is what is checked.
					if out, err := try(h, "", crane, "auth", "login", reg.host, "-u", "sa", "-p", token); err != nil {
						return out, err
					}
				}
				return try(h, "", crane, append(args, "--insecure")...)
			}
			out, err := as(adminToken, "append", "-f", layer, "-t", repo("team/app")+":v1")
			expect(t, "admin pushes team/app", out, err, nil)
			out, err = as(adminToken, "append", "-f", layer, "-t", repo("team/other")+":v1")
			expect(t, "admin pushes team/other", out, err, nil)
			out, err = as(adminToken, "catalog", reg.host)
			expect(t, "admin lists the catalog", out, err, nil)

			out, err = as(ciToken, "pull", repo("team/app")+":v1", filepath.Join(t.TempDir(), "x.tar"))
			expect(t, "ci pulls team/app", out, err, nil)
			out, err = as(ciToken, "append", "-f", layer, "-t", repo("team/app")+":v2")
			expect(t, "ci pushes team/app", out, err, says403)
			out, err = as(ciToken, "manifest", repo("team/other")+":v1")
			expect(t, "ci pulls team/other", out, err, says403)
			out, err = as(ciToken, "catalog", reg.host)
			expect(t, "ci lists the catalog", out, err, says403)
			out, err = as(ciToken[:len(ciToken)-4]+"AAAA", "manifest", repo("team/app")+":v1")
			expect(t, "a forged token", out, err, says401)
			out, err = as("", "manifest", repo("team/app")+":v1")
			expect(t, "anonymous pull", out, err, says401)

			// Granting push: the next push gets through once the cached
			// "no" expires, within the TTL.
			grant(t, env, ns, "ci-push-app-"+challenge, "ci", []string{"push"}, registry, "team/app-"+challenge)
			granted := time.Now()
			for {
				out, err = as(ciToken, "append", "-f", layer, "-t", repo("team/app")+":v2")
				if err == nil || time.Since(granted) > cacheTTL+5*time.Second {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			expect(t, "ci pushes team/app after the RoleBinding", out, err, nil)
			if d := time.Since(granted); err == nil {
				t.Logf("push allowed %v after the RoleBinding (decision cache TTL %v)", d.Round(10*time.Millisecond), cacheTTL)
			}
			logb, _ := os.ReadFile(reg.log)
			if strings.Contains(string(logb), ciToken) || strings.Contains(string(logb), adminToken) {
				t.Error("registryd's log contains a token")
			}
		})
	}
}

// kubeRegistry creates namespace ns and in it Registry name with spec (its
// storage mem://: registryd processes are given their own).
func kubeRegistry(t *testing.T, ns, name string, spec v1.RegistrySpec) {
	t.Helper()
	env := kubeEnv(t)
	if err := env.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if spec.Storage.URL == "" {
		spec.Storage.URL = "mem://"
	}
	if err := env.Client.Create(t.Context(), &v1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}

// kubeReplicas starts n registryd processes serving Registry name of ns
// over one file bucket, with flags added.
func kubeReplicas(t *testing.T, ns, name string, n int, flags ...string) []*registry {
	t.Helper()
	storage := "file://" + t.TempDir()
	replicas := make([]*registry, n)
	for i := range replicas {
		replicas[i] = startRegistryd(t, storage, append([]string{"--registry", name, "--namespace", ns, "--kubeconfig", kube.kubeconfig}, flags...)...)
	}
	return replicas
}
