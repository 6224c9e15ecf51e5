package controllers_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob/memblob"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/rest"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// The permissions of each ServiceAccount, as `kubectl auth can-i --list`
// prints them (columns: resources, non-resource URLs, resource names,
// verbs; whitespace collapsed, sorted). The operator's come from
// config/rbac/role.yaml; registryd's from the Role and binding the operator
// makes for a Registry "main" in auth mode kubernetes.
var (
	// What the API server grants every authenticated user
	// (system:basic-user, system:discovery, system:public-info-viewer,
	// system:service-account-issuer-discovery): both lists hold it.
	everyUser = []string{
		"[/.well-known/openid-configuration/] [] [get]",
		"[/.well-known/openid-configuration] [] [get]",
		"[/api/*] [] [get]",
		"[/api] [] [get]",
		"[/apis/*] [] [get]",
		"[/apis] [] [get]",
		"[/healthz] [] [get]",
		"[/healthz] [] [get]",
		"[/livez] [] [get]",
		"[/livez] [] [get]",
		"[/openapi/*] [] [get]",
		"[/openapi] [] [get]",
		"[/openid/v1/jwks/] [] [get]",
		"[/openid/v1/jwks] [] [get]",
		"[/readyz] [] [get]",
		"[/readyz] [] [get]",
		"[/version/] [] [get]",
		"[/version/] [] [get]",
		"[/version] [] [get]",
		"[/version] [] [get]",
		"clustertrustbundles.certificates.k8s.io [] [] [get list watch]",
		"selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
		"selfsubjectreviews.authentication.k8s.io [] [] [create]",
		"selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
	}
	operatorPermissions = slices.Concat(everyUser, []string{
		"clusterrolebindings.rbac.authorization.k8s.io [] [] [create delete get list patch watch]",
		"clusterroles.rbac.authorization.k8s.io [] [system:auth-delegator] [bind]",
		"cronjobs.batch [] [] [create delete get list patch watch]",
		// Retention's in-use protection: list, never watch, every workload.
		"daemonsets.apps [] [] [list]",
		"deployments.apps [] [] [create get list patch watch]",
		"events [] [] [create patch]",
		"events.events.k8s.io [] [] [create patch]",
		"ingresses.networking.k8s.io [] [] [create delete get list patch watch]",
		// Collection Jobs asked for by annotation; their state fills
		// status.gc (retention lists them too).
		"jobs.batch [] [] [create get list patch watch]",
		"namespaces [] [] [get]",
		"persistentvolumeclaims [] [] [create get list patch watch]",
		"poddisruptionbudgets.policy [] [] [create delete get list patch watch]",
		"pods [] [] [list]",
		"registries.stevedore.dev [] [] [get list patch watch]",
		"registries.stevedore.dev/finalizers [] [] [update]",
		// status.usage: the recount is a conditional update.
		"registries.stevedore.dev/status [] [] [patch update]",
		"replicasets.apps [] [] [list]",
		"replicationcontrollers [] [] [list]",
		"repositories.stevedore.dev [] [] [create delete get list patch watch]",
		"repositories.stevedore.dev/status [] [] [patch update]",
		"rolebindings.rbac.authorization.k8s.io [] [] [create get list patch watch]",
		"roles.rbac.authorization.k8s.io [] [] [create get list patch watch]",
		"secrets [] [] [create get]",
		"serviceaccounts [] [] [create get list patch watch]",
		"services [] [] [create get list patch watch]",
		"statefulsets.apps [] [] [list]",
		// The metrics endpoint's authentication and authorization.
		"subjectaccessreviews.authorization.k8s.io [] [] [create]",
		// A repository's tag shards: retention deletes from them, an import creates them.
		"tagshards.stevedore.dev [] [] [create get list update watch]",
		"tokenreviews.authentication.k8s.io [] [] [create]",
	})
	registrydPermissions = slices.Concat(everyUser, []string{
		"events [] [] [create patch]",
		"events.events.k8s.io [] [] [create patch]",
		"registries.stevedore.dev [] [main] [get list watch]",
		// Reservations against spec.quota in status.usage.
		"registries.stevedore.dev/status [] [main] [update]",
		"repositories.stevedore.dev [] [] [get list watch create]",
		"repositories.stevedore.dev/status [] [] [update]",
		"subjectaccessreviews.authorization.k8s.io [] [] [create]",
		"tagshards.stevedore.dev [] [] [get list watch create update]",
		"tokenreviews.authentication.k8s.io [] [] [create]",
	})
)

// TestServiceAccountPermissions runs the real kubectl's `auth can-i --list`
// as the operator's and registryd's ServiceAccounts and compares what they
// may do with the lists above: nothing more, nothing less.
func TestServiceAccountPermissions(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthKubernetes })
	eventually(t, "registryd's bindings", func() error {
		if err := get(&rbacv1.RoleBinding{}, ns, "main-registry"); err != nil {
			return err
		}
		return get(&rbacv1.ClusterRoleBinding{}, "", "stevedore:"+ns+":main:auth-delegator")
	})
	kubeconfig, err := env.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user string
		want       []string
	}{
		{"operator", operatorUser, operatorPermissions},
		{"registryd", "system:serviceaccount:" + ns + ":main-registry", registrydPermissions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(filepath.Join(env.AssetsDir(), "kubectl"), "--kubeconfig", kubeconfig,
				"auth", "can-i", "--list", "--as="+tc.user, "-n", ns).CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl auth can-i --list: %v\n%s", err, out)
			}
			got := permissionLines(string(out))
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s may do (quoted for the list above):\n%s\nwant:\n%s", tc.user, quoted(got), strings.Join(want, "\n"))
			}
		})
	}
}

// TestRegistrydWorksUnderItsRole runs registryd's kubernetes tag store as
// registryd's ServiceAccount, with the Role the operator made: a push
// creates the Repository and writes its tag into status, so the narrowed
// Role is still enough.
func TestRegistrydWorksUnderItsRole(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := newNamespace(t)
	// A quota: registryd reserves and settles on the Registry's status.
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Quota = &v1.RegistryQuota{Bytes: resource.NewQuantity(1<<20, resource.BinarySI)}
	})
	eventually(t, "registryd's binding", func() error { return get(&rbacv1.RoleBinding{}, ns, "main-registry") })
	usage := func() (*v1.QuotaUsage, error) {
		var reg v1.Registry
		err := get(&reg, ns, "main")
		return reg.Status.Usage, err
	}
	eventually(t, "the first count of usage", func() error {
		if u, err := usage(); err != nil || u == nil {
			return fmt.Errorf("usage %v (%v)", u, err)
		}
		return nil
	})
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":main-registry"}
	b := memblob.OpenBucket(nil)
	defer b.Close()
	store, err := kube.New(ctx, cfg, kube.Options{Namespace: ns, Registry: "main", Journal: tags.NewBucket(b)})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "tag store ready", store.Ready)
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1}
	if err := store.PutContent(ctx, "team/app", "v1", d, 100); err != nil {
		t.Fatalf("push as registryd: %v", err)
	}
	// Eventually: a recount racing the settle may count the push twice
	// until the next one (over, never under; docs/operator.md).
	eventually(t, "the push settled in usage", func() error {
		if u, err := usage(); err != nil || u == nil || u.Bytes != 100 || len(u.Pending) != 0 {
			return fmt.Errorf("usage after the push: %+v (%v); want 100 bytes settled", u, err)
		}
		return nil
	})
	var repo v1.Repository
	if err := get(&repo, ns, v1.RepositoryObjectName("main", "team/app")); err != nil {
		t.Fatal(err)
	}
	if tag, ok := repo.Status.FindTag("v1"); !ok || tag.Digest != d.Digest.String() {
		t.Errorf("Repository status holds %+v", repo.Status.Tags)
	}
}

// permissionLines are can-i's rows, whitespace collapsed, sorted, without
// the header.
func permissionLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] == "Resources" || strings.HasPrefix(l, "Warning") {
			continue
		}
		lines = append(lines, strings.Join(f, " "))
	}
	slices.Sort(lines)
	return lines
}

func quoted(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "\t\t%q,\n", l)
	}
	return b.String()
}
