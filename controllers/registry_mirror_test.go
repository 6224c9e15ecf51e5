package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestRegistryMirror: spec.mirror reaches registryd as --mirror, with each
// upstream's credentials Secret and CA bundle mounted where it says, and
// nothing secret in the arguments.
func TestRegistryMirror(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Mirror = &v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{
			{Host: "docker.io", Repositories: []string{"library/*", "bitnami/*"}},
			{Host: "ghcr.io", CredentialsSecretRef: &corev1.LocalObjectReference{Name: "ghcr-creds"},
				CABundle: &v1.CABundleSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "ghcr-ca"}, Key: "ca.pem"}}},
			{Host: "registry.example.com:5000", Endpoint: "http://10.0.0.7:5000",
				CABundle: &v1.CABundleSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "corp-ca"}, Key: "bundle"}}},
		}}
	})
	var d appsv1.Deployment
	eventually(t, "Deployment", func() error { return get(&d, ns, "main-registry") })
	c := registrydContainer(&d)
	var cfg struct {
		TagTTL    string `json:"tagTTL"`
		Offline   *bool  `json:"offline"`
		Upstreams []struct {
			Host, Endpoint, UsernameFile, PasswordFile, CAFile string
			Repositories                                       []string
		} `json:"upstreams"`
	}
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--mirror="); ok {
			if err := json.Unmarshal([]byte(v), &cfg); err != nil {
				t.Fatalf("--mirror %s: %v", v, err)
			}
		}
	}
	if len(cfg.Upstreams) != 3 {
		t.Fatalf("--mirror upstreams %+v, args %v", cfg.Upstreams, c.Args)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	up := cfg.Upstreams
	for _, tc := range []struct {
		field     string
		got, want any
	}{
		// The CRD's defaults reach registryd.
		{"tagTTL default", cfg.TagTTL, (5 * time.Minute).String()},
		{"offline default", cfg.Offline != nil && *cfg.Offline, true},
		{"host", up[0].Host, "docker.io"},
		{"repositories", up[0].Repositories, []string{"library/*", "bitnami/*"}},
		{"no credentials when none given", up[0].UsernameFile + up[0].CAFile, ""},
		{"endpoint", up[2].Endpoint, "http://10.0.0.7:5000"},
		{"credentials file", up[1].UsernameFile, "/etc/stevedore/mirror/1/credentials/username"},
		{"credentials Secret volume", vols["mirror-1-credentials"].Secret.SecretName, "ghcr-creds"},
		{"credentials Secret keys", len(vols["mirror-1-credentials"].Secret.Items), 2},
		{"credentials mount", mounts["mirror-1-credentials"], "/etc/stevedore/mirror/1/credentials"},
		{"CA from a Secret", vols["mirror-1-ca"].Secret.SecretName + "/" + vols["mirror-1-ca"].Secret.Items[0].Key, "ghcr-ca/ca.pem"},
		{"CA from a ConfigMap", vols["mirror-2-ca"].ConfigMap.Name + "/" + vols["mirror-2-ca"].ConfigMap.Items[0].Key, "corp-ca/bundle"},
		{"CA file", up[2].CAFile, "/etc/stevedore/mirror/2/ca/ca.crt"},
		{"CA mount", mounts["mirror-2-ca"], "/etc/stevedore/mirror/2/ca"},
		{"no secret in the args", slices.ContainsFunc(c.Args, func(a string) bool { return strings.Contains(a, "ghcr-creds") }), false},
	} {
		t.Run(tc.field, func(t *testing.T) {
			if !jsonEqual(tc.got, tc.want) {
				t.Errorf("%s: got %+v, want %+v", tc.field, tc.got, tc.want)
			}
		})
	}

	t.Run("status gives each node's hosts.toml", func(t *testing.T) {
		var svc corev1.Service
		var reg v1.Registry
		eventually(t, "status.mirror", func() error {
			if err := get(&svc, ns, "main-registry"); err != nil {
				return err
			}
			if err := get(&reg, ns, "main"); err != nil {
				return err
			}
			if reg.Status.Mirror == nil || len(reg.Status.Mirror.Hosts) != 3 {
				return errorf("status.mirror %+v", reg.Status.Mirror)
			}
			return nil
		})
		mirrorLine := `[host."http://` + svc.Spec.ClusterIP + `:5000"]`
		for i, want := range []struct{ host, path, server string }{
			{"docker.io", "/etc/containerd/certs.d/docker.io/hosts.toml", `server = "https://registry-1.docker.io"`},
			{"ghcr.io", "/etc/containerd/certs.d/ghcr.io/hosts.toml", `server = "https://ghcr.io"`},
			{"registry.example.com:5000", "/etc/containerd/certs.d/registry.example.com:5000/hosts.toml", `server = "http://10.0.0.7:5000"`},
		} {
			h := reg.Status.Mirror.Hosts[i]
			if h.Host != want.host || h.Path != want.path || !strings.Contains(h.HostsTOML, want.server) ||
				!strings.Contains(h.HostsTOML, mirrorLine) || !strings.Contains(h.HostsTOML, `capabilities = ["pull", "resolve"]`) {
				t.Errorf("hosts[%d] = %+v\n%s\nwant %+v and %s", i, h, h.HostsTOML, want, mirrorLine)
			}
		}
	})

	t.Run("tagTTL and offline set", func(t *testing.T) {
		updateRegistry(t, ns, "main", func(r *v1.Registry) {
			r.Spec.Mirror.TagTTL = &metav1.Duration{Duration: 30 * time.Second}
			r.Spec.Mirror.Offline = ptr.To(false)
		})
		eventually(t, "--mirror updated", func() error {
			if err := get(&d, ns, "main-registry"); err != nil {
				return err
			}
			for _, a := range registrydContainer(&d).Args {
				if strings.HasPrefix(a, "--mirror=") && strings.Contains(a, `"tagTTL":"30s"`) && strings.Contains(a, `"offline":false`) {
					return nil
				}
			}
			return errorf("args %v", registrydContainer(&d).Args)
		})
	})

	t.Run("spec.mirror off: no flag, no volumes", func(t *testing.T) {
		updateRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Mirror = nil })
		eventually(t, "mirror removed", func() error {
			if err := get(&d, ns, "main-registry"); err != nil {
				return err
			}
			c := registrydContainer(&d)
			var reg v1.Registry
			if err := get(&reg, ns, "main"); err != nil || reg.Status.Mirror != nil {
				return errorf("status.mirror %+v (%v)", reg.Status.Mirror, err)
			}
			if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--mirror") }) ||
				slices.ContainsFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "mirror-") }) {
				return errorf("still mirrored: %v", c.Args)
			}
			return nil
		})
	})
}

// TestRegistryMirrorValidation: the API server refuses a bad spec.mirror.
func TestRegistryMirrorValidation(t *testing.T) {
	ns := newNamespace(t)
	for _, tc := range []struct {
		name string
		m    v1.MirrorSpec
		want string
	}{
		{"no upstreams", v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{}}, "upstreams"},
		{"host with a path", v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{{Host: "docker.io/library"}}}, "host"},
		{"endpoint with a path", v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{{Host: "a.io", Endpoint: "https://a.io/v2"}}}, "endpoint"},
		{"the same host twice", v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{{Host: "a.io"}, {Host: "a.io"}}}, "Duplicate"},
		{"CA from both", v1.MirrorSpec{Upstreams: []v1.MirrorUpstream{{Host: "a.io", CABundle: &v1.CABundleSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "k"}, SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}}}, "exactly one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns},
				Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}, Mirror: &tc.m}}
			err := env.Client.Create(context.Background(), reg)
			if err == nil {
				_ = env.Client.Delete(context.Background(), reg)
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refused without naming %q: %v", tc.want, err)
			}
		})
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// jsonEqual compares values as JSON, so []string and []any of the same
// strings, or typed and untyped strings, compare equal.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestMirrorDocExample applies docs/mirror.md's Secret and Registry: the
// API server takes them, and the status names a hosts.toml per upstream.
func TestMirrorDocExample(t *testing.T) {
	ctx := context.Background()
	doc := testutil.DocYAML(t, "docs/mirror.md")
	ns := ""
	for _, kind := range []string{"Secret", "Registry"} {
		for _, o := range testutil.DocKind(t, doc, kind) {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(o.JSON); err != nil {
				t.Fatal(err)
			}
			if ns == "" {
				ns = u.GetNamespace()
				if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := env.Client.Create(ctx, u); err != nil {
				t.Fatalf("applying the page's %s %s: %v", kind, u.GetName(), err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(ctx, u) })
		}
	}
	eventually(t, "status.mirror of the page's Registry", func() error {
		var reg v1.Registry
		if err := get(&reg, ns, "cache"); err != nil {
			return err
		}
		if reg.Status.Mirror == nil || len(reg.Status.Mirror.Hosts) != 3 ||
			!strings.Contains(reg.Status.Mirror.Hosts[0].HostsTOML, `server = "https://registry-1.docker.io"`) {
			return errorf("status.mirror %+v", reg.Status.Mirror)
		}
		return nil
	})
}
