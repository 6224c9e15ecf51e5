package main

import (
	"flag"
	"fmt"
	"io"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
)

// TestOperatorArgsParse checks that every argument the operator puts in
// registryd's Deployment is a flag registryd knows, with the meaning meant.
func TestOperatorArgsParse(t *testing.T) {
	base := v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: "team"},
		Spec:       v1.RegistrySpec{Storage: v1.StorageSpec{URL: "s3://bucket?region=eu-west-1"}},
	}
	tests := []struct {
		name   string
		mutate func(*v1.Registry)
		check  func(t *testing.T, c config)
	}{
		{"defaults", nil, func(t *testing.T, c config) {
			if c.registry != "main" || c.namespace != "team" || c.storageURL != "s3://bucket?region=eu-west-1" || c.debugAddr == "" {
				t.Errorf("config %+v", c)
			}
			// Never open by default: an unset mode is kubernetes.
			if c.authMode != "kubernetes" || c.anonymousPull {
				t.Errorf("auth %q anonymous pull %v", c.authMode, c.anonymousPull)
			}
		}},
		{"auth none with anonymous pull", func(r *v1.Registry) {
			r.Spec.Auth = v1.AuthSpec{Mode: v1.AuthNone, AnonymousPull: true}
		}, func(t *testing.T, c config) {
			if c.authMode != "none" || !c.anonymousPull {
				t.Errorf("auth %q anonymous pull %v", c.authMode, c.anonymousPull)
			}
		}},
		{"htpasswd with the bearer challenge", func(r *v1.Registry) {
			r.Spec.Auth = v1.AuthSpec{Mode: v1.AuthHtpasswd, HtpasswdSecretRef: &corev1.LocalObjectReference{Name: "users"}, Challenge: "bearer"}
		}, func(t *testing.T, c config) {
			if c.authMode != "htpasswd" || c.htpasswdFile == "" || c.htpasswdReadOnlyFile == "" || c.authChallenge != "bearer" {
				t.Errorf("config %+v", c)
			}
		}},
		{"kubernetes token audiences", func(r *v1.Registry) {
			r.Spec.Auth = v1.AuthSpec{Mode: v1.AuthKubernetes, TokenAudiences: []string{"a", "b"}}
		}, func(t *testing.T, c config) {
			if c.tokenAudiences != "a,b" || c.authChallenge != "basic" {
				t.Errorf("config %+v", c)
			}
		}},
		{"prefix and limits", func(r *v1.Registry) {
			r.Spec.Storage.Prefix = "tenant-a/"
			r.Spec.Limits.MaxManifestBytes = 1 << 20
		}, func(t *testing.T, c config) {
			if c.storagePrefix != "tenant-a/" || c.maxManifestBytes != 1<<20 {
				t.Errorf("config %+v", c)
			}
		}},
		{"redirect on by default for s3", nil, func(t *testing.T, c config) {
			if c.redirectTTL != 20*time.Minute {
				t.Errorf("redirect TTL %v, want 20m", c.redirectTTL)
			}
		}},
		{"redirect off by choice", func(r *v1.Registry) { r.Spec.Redirect = &v1.RedirectSpec{Enabled: ptr.To(false)} }, func(t *testing.T, c config) {
			if c.redirectTTL != 0 {
				t.Errorf("redirect TTL %v, want off", c.redirectTTL)
			}
		}},
		{"redirect off by default for file", func(r *v1.Registry) { r.Spec.Storage.URL = "file:///data" }, func(t *testing.T, c config) {
			if c.redirectTTL != 0 {
				t.Errorf("redirect TTL %v, want off", c.redirectTTL)
			}
		}},
		{"tls", func(r *v1.Registry) { r.Spec.TLS = &v1.TLSSpec{SecretName: "cert"} }, func(t *testing.T, c config) {
			if c.tlsCertFile == "" || c.tlsKeyFile == "" {
				t.Errorf("config %+v", c)
			}
		}},
		{"no mirror by default", nil, func(t *testing.T, c config) {
			if c.mirror != "" {
				t.Errorf("--mirror %q without spec.mirror", c.mirror)
			}
		}},
		{"mirror", func(r *v1.Registry) {
			r.Spec.Mirror = &v1.MirrorSpec{TagTTL: &metav1.Duration{Duration: 90 * time.Second}, Offline: ptr.To(false),
				Upstreams: []v1.MirrorUpstream{
					{Host: "docker.io", Repositories: []string{"library/*"}},
					{Host: "registry.example.com:5000", Endpoint: "http://10.0.0.1:5000",
						CredentialsSecretRef: &corev1.LocalObjectReference{Name: "creds"},
						CABundle:             &v1.CABundleSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "ca"}, Key: "bundle.pem"}}},
				}}
		}, func(t *testing.T, c config) {
			cfg, err := mirror.ParseConfig(c.mirror)
			if err != nil {
				t.Fatalf("registryd refuses --mirror %s: %v", c.mirror, err)
			}
			if cfg.TagTTL.Duration != 90*time.Second || *cfg.Offline || len(cfg.Upstreams) != 2 {
				t.Fatalf("config %+v", cfg)
			}
			dh, own := cfg.Upstreams[0], cfg.Upstreams[1]
			if dh.Host != "docker.io" || dh.Endpoint != "https://registry-1.docker.io" || dh.Repositories[0] != "library/*" || dh.UsernameFile != "" || dh.CAFile != "" {
				t.Errorf("docker.io upstream %+v", dh)
			}
			if own.Endpoint != "http://10.0.0.1:5000" || own.UsernameFile != "/etc/stevedore/mirror/1/credentials/username" ||
				own.PasswordFile != "/etc/stevedore/mirror/1/credentials/password" || own.CAFile != "/etc/stevedore/mirror/1/ca/ca.crt" {
				t.Errorf("second upstream %+v", own)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := base.DeepCopy()
			if tc.mutate != nil {
				tc.mutate(reg)
			}
			fs := flag.NewFlagSet("registryd", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var c config
			bindFlags(fs, &c)
			args := controllers.RegistrydArgs(reg)
			if err := fs.Parse(args); err != nil {
				t.Fatalf("registryd refuses the operator's args %v: %v", args, err)
			}
			if fs.NArg() != 0 {
				t.Fatalf("stray arguments %v", fs.Args())
			}
			tc.check(t, c)
		})
	}
}

func TestFileDefaults(t *testing.T) {
	for in, want := range map[string]string{
		"file:///var/lib/stevedore":           "file:///var/lib/stevedore?metadata=skip",
		"file:///var/lib/stevedore?metadata=": "file:///var/lib/stevedore?metadata=",
		"file:///d?create_dir=1":              "file:///d?create_dir=1&metadata=skip",
		"s3://bucket?region=eu-west-1":        "s3://bucket?region=eu-west-1",
		"mem://":                              "mem://",
	} {
		if got := fileDefaults(in); got != want {
			t.Errorf("fileDefaults(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAPIResource(t *testing.T) {
	for path, want := range map[string]string{
		"/apis/stevedore.dev/v1alpha1/namespaces/team/repositories/x/status": "repositories",
		"/apis/stevedore.dev/v1alpha1/namespaces/team/repositories":          "repositories",
		"/apis/events.k8s.io/v1/namespaces/team/events":                      "events",
		"/api/v1/namespaces/team":                                            "namespaces",
		"/apis/authentication.k8s.io/v1/tokenreviews":                        "tokenreviews",
		"/api/v1/nodes": "nodes",
		"/version":      "other",
	} {
		if got := apiResource(path); got != want {
			t.Errorf("apiResource(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestOperatorGCArgsParse checks that the operator's `registryd gc`
// arguments (its CronJob) are flags `registryd gc` knows, meaning what the
// Registry's spec.gc says.
func TestOperatorGCArgsParse(t *testing.T) {
	for _, tt := range []struct {
		grace  time.Duration
		dryRun bool
	}{{20 * time.Minute, false}, {0, false}, {time.Hour, true}} {
		t.Run(fmt.Sprintf("grace=%s,dryRun=%t", tt.grace, tt.dryRun), func(t *testing.T) { testOperatorGCArgsParse(t, tt.grace, tt.dryRun) })
	}
}

func testOperatorGCArgsParse(t *testing.T, grace time.Duration, dryRun bool) {
	reg := v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: "team"},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "s3://bucket", Prefix: "a/"},
			GC: &v1.GCSpec{Schedule: "@daily", GracePeriod: &metav1.Duration{Duration: grace}, DeleteUntagged: true, DryRun: dryRun,
				UntaggedDelay: &metav1.Duration{Duration: 72 * time.Hour}}},
	}
	args := controllers.GCArgs(&reg)
	if args[0] != "gc" {
		t.Fatalf("args %q: want the gc subcommand first", args)
	}
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c gcConfig
	bindGCFlags(fs, &c)
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("registryd gc refuses the operator's args %q: %v", args, err)
	}
	if c.registry != "main" || c.namespace != "team" || c.storageURL != "s3://bucket" || c.prefix != "a/" ||
		c.grace != grace || !c.deleteUntagged || c.dryRun != dryRun || c.reportFile != "/dev/termination-log" ||
		c.untaggedDelay != 72*time.Hour || c.pace != defaultGCPace {
		t.Errorf("config %+v", c)
	}
}
