package v1alpha1_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(e *testenv.Env) (func(), error) { env = e; return nil, nil }))
}

func newRegistry(name string, mutate func(*v1.Registry)) *v1.Registry {
	r := &v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "file:///var/lib/stevedore",
			PersistentVolumeClaim: &v1.PersistentVolumeClaimSpec{}}},
	}
	if mutate != nil {
		mutate(r)
	}
	return r
}

// TestRegistryRoundTrip creates a Registry through the real API server and
// reads it back with every CRD default applied.
func TestRegistryRoundTrip(t *testing.T) {
	ctx := context.Background()
	in := newRegistry("roundtrip", nil)
	if err := env.Client.Create(ctx, in); err != nil {
		t.Fatalf("create: %v", err)
	}
	var got v1.Registry
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(in), &got); err != nil {
		t.Fatalf("get: %v", err)
	}
	checks := []struct {
		field     string
		got, want any
	}{
		{"storage.url", got.Spec.Storage.URL, "file:///var/lib/stevedore"},
		{"replicas", ptr.Deref(got.Spec.Replicas, -1), int32(1)},
		{"service.port", got.Spec.Service.Port, int32(5000)},
		{"service.type", string(got.Spec.Service.Type), "ClusterIP"},
		{"auth.mode", got.Spec.Auth.Mode, v1.AuthKubernetes},
		{"limits.maxManifestBytes", got.Spec.Limits.MaxManifestBytes, int64(4 << 20)},
		{"autoCreateRepositories", ptr.Deref(got.Spec.AutoCreateRepositories, false), true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
}

// TestValidationMessages checks that the API server itself refuses bad
// objects, with a message a person understands.
func TestValidationMessages(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		obj     client.Object
		message string
	}{
		{"bad storage scheme", newRegistry("bad-scheme", func(r *v1.Registry) { r.Spec.Storage.URL = "ftp://x" }),
			"storage.url must start with one of s3://, gs://, azblob://, file://, mem://"},
		{"negative replicas", newRegistry("neg", func(r *v1.Registry) { r.Spec.Replicas = ptr.To[int32](-1) }),
			"spec.replicas: Invalid value: -1"},
		{"htpasswd without secret", newRegistry("htp", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthHtpasswd }),
			"auth.htpasswdSecretRef is required when auth.mode is htpasswd"},
		{"registry name too long for its Service", newRegistry("r"+strings.Repeat("x", 54), nil),
			"a Registry name must be a DNS label of at most 54 characters"},
		{"file storage without a volume", newRegistry("file-nopvc", func(r *v1.Registry) { r.Spec.Storage.PersistentVolumeClaim = nil }),
			"file:// storage needs storage.persistentVolumeClaim"},
		{"a volume for a cloud bucket", newRegistry("s3-pvc", func(r *v1.Registry) { r.Spec.Storage.URL = "s3://b" }),
			"storage.persistentVolumeClaim is only for file:// storage"},
		{"mem storage with replicas", newRegistry("mem-2", func(r *v1.Registry) {
			r.Spec.Storage = v1.StorageSpec{URL: "mem://"}
			r.Spec.Replicas = ptr.To[int32](2)
		}), "mem:// storage lives in each pod's memory: replicas must be 0 or 1"},
		{"file storage with replicas on a ReadWriteOnce volume", newRegistry("file-2", func(r *v1.Registry) { r.Spec.Replicas = ptr.To[int32](2) }),
			"file:// storage with replicas > 1 needs a ReadWriteMany storage.persistentVolumeClaim"},
		{"repository name with upper case", newRepository("upper", "Team/App"),
			"spec.name must be a valid OCI repository path"},
		{"repository name with ..", newRepository("dots", "../x"),
			"spec.name must be a valid OCI repository path"},
		{"repository immutable tag pattern that is no regular expression", withImmutable(newRepository("badre", "x"), "v[0-9"),
			"spec.immutableTags: every entry must be a valid regular expression"},
		{"registry immutable tag pattern that is no regular expression", newRegistry("badre", func(r *v1.Registry) { r.Spec.ImmutableTags = []string{"ok", "(x"} }),
			"spec.immutableTags: every entry must be a valid regular expression"},
		{"retention tag pattern that is no regular expression", newRegistry("badret", func(r *v1.Registry) {
			r.Spec.Retention = []v1.RegistryRetention{{Repositories: "**", RetentionSpec: v1.RetentionSpec{Rules: []v1.RetentionRule{{Tags: []string{"ci-("}}}}}}
		}), "retention tags: every entry must be a valid regular expression"},
		{"retention without rules", func() client.Object {
			r := newRepository("norules", "x")
			r.Spec.Retention = &v1.RetentionSpec{}
			return r
		}(), "spec.retention.rules"},
		{"gc untaggedDelay without deleteUntagged", newRegistry("untagged", func(r *v1.Registry) {
			r.Spec.GC = &v1.GCSpec{UntaggedDelay: &metav1.Duration{Duration: time.Hour}}
		}), "untaggedDelay needs deleteUntagged: true"},
		{"empty immutable tag pattern", withImmutable(newRepository("emptyre", "x"), ""),
			"spec.immutableTags[0] in body should be at least 1 chars long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := env.Client.Create(ctx, tc.obj)
			if err == nil {
				t.Fatalf("create succeeded; want refusal containing %q", tc.message)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("error %q does not contain %q", err, tc.message)
			}
		})
	}
}

func newRepository(objName, path string) *v1.Repository {
	return &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{Name: objName, Namespace: "default"},
		Spec:       v1.RepositorySpec{Registry: "main", Name: path},
	}
}

func withImmutable(r *v1.Repository, patterns ...string) *v1.Repository {
	r.Spec.ImmutableTags = patterns
	return r
}

// TestImmutableTagPatternsAccepted: valid patterns pass the CEL check that
// refuses invalid ones.
func TestImmutableTagPatternsAccepted(t *testing.T) {
	ctx := context.Background()
	patterns := []string{"latest", "v[0-9]+[.][0-9]+[.][0-9]+", `^release-.*$`, `v\d+(\.\d+)*`, ".*"}
	if err := env.Client.Create(ctx, withImmutable(newRepository("goodre", "goodre"), patterns...)); err != nil {
		t.Fatalf("Repository with valid patterns refused: %v", err)
	}
	if err := env.Client.Create(ctx, newRegistry("goodre", func(r *v1.Registry) { r.Spec.ImmutableTags = patterns })); err != nil {
		t.Fatalf("Registry with valid patterns refused: %v", err)
	}
}

// TestRepositoryImmutableFields checks the CEL transition rules.
func TestRepositoryImmutableFields(t *testing.T) {
	ctx := context.Background()
	repo := newRepository("immutable", "team/app")
	if err := env.Client.Create(ctx, repo); err != nil {
		t.Fatalf("create: %v", err)
	}
	tests := []struct {
		name    string
		mutate  func(*v1.Repository)
		message string
	}{
		{"registry", func(r *v1.Repository) { r.Spec.Registry = "other" }, "spec.registry is immutable"},
		{"name", func(r *v1.Repository) { r.Spec.Name = "team/other" }, "spec.name is immutable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cur v1.Repository
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(repo), &cur); err != nil {
				t.Fatal(err)
			}
			tc.mutate(&cur)
			err := env.Client.Update(ctx, &cur)
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("update error = %v, want one containing %q", err, tc.message)
			}
		})
	}
}
