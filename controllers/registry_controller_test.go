package controllers_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

func createRegistry(t *testing.T, ns, name string, mutate func(*v1.Registry)) *v1.Registry {
	t.Helper()
	reg := &v1.Registry{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.RegistrySpec{
			Storage: v1.StorageSpec{URL: "mem://"},
			Auth:    v1.AuthSpec{Mode: v1.AuthNone},
		},
	}
	if mutate != nil {
		mutate(reg)
	}
	if strings.HasPrefix(reg.Spec.Storage.URL, "file://") && reg.Spec.Storage.PersistentVolumeClaim == nil {
		// Required for file://; the operator of the tests reaches the
		// directory itself (LocalStorageReachable), envtest has no kubelet.
		reg.Spec.Storage.PersistentVolumeClaim = &v1.PersistentVolumeClaimSpec{ClaimName: "test-bucket"}
	}
	if err := env.Client.Create(context.Background(), reg); err != nil {
		t.Fatalf("creating Registry: %v", err)
	}
	// Gone with its test, so a restarted operator does not probe the
	// storage of every earlier test (some of it stopped with its test).
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), reg.DeepCopy()) })
	return reg
}

func updateRegistry(t *testing.T, ns, name string, mutate func(*v1.Registry)) {
	t.Helper()
	eventually(t, "updating Registry", func() error {
		var reg v1.Registry
		if err := get(&reg, ns, name); err != nil {
			return err
		}
		mutate(&reg)
		return env.Client.Update(context.Background(), &reg)
	})
}

func controlledBy(obj metav1.Object, name string) error {
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.Kind != "Registry" || ref.Name != name {
		return fmt.Errorf("%s has controller reference %v, want Registry %s", obj.GetName(), ref, name)
	}
	return nil
}

func deploymentArgs(ns, name string) []string {
	var d appsv1.Deployment
	if err := get(&d, ns, name); err != nil {
		return nil
	}
	return registrydContainer(&d).Args
}

func registrydContainer(d *appsv1.Deployment) corev1.Container {
	return d.Spec.Template.Spec.Containers[0]
}

// TestRegistryChildren checks that a Registry gets every child, controlled by
// it and configured from its spec.
func TestRegistryChildren(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Limits.MaxManifestBytes = 1 << 20
		r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: "creds"}
	})
	name := "main-registry"
	children := []struct {
		obj   client.Object
		name  string
		check func(client.Object) error
	}{
		{&corev1.ServiceAccount{}, name, nil},
		{&rbacv1.Role{}, name, func(o client.Object) error {
			for _, rule := range o.(*rbacv1.Role).Rules {
				if slices.Contains(rule.Resources, "repositories/status") && slices.Contains(rule.Verbs, "update") {
					return nil
				}
			}
			return fmt.Errorf("role does not grant update on repositories/status")
		}},
		{&rbacv1.RoleBinding{}, name, func(o client.Object) error {
			if s := o.(*rbacv1.RoleBinding).Subjects; len(s) != 1 || s[0].Name != name {
				return fmt.Errorf("subjects %v", s)
			}
			return nil
		}},
		{&corev1.Secret{}, name + "-http-secret", func(o client.Object) error {
			// Two rand.Text values: 52 base32 characters, 256 bits.
			if n := len(o.(*corev1.Secret).Data["secret"]); n != 52 {
				return fmt.Errorf("secret holds %d characters, want 52", n)
			}
			return nil
		}},
		{&appsv1.Deployment{}, name, func(o client.Object) error {
			d := o.(*appsv1.Deployment)
			c := registrydContainer(d)
			want := []string{"--storage=mem://", "--max-manifest-bytes=1048576", "--http-secret-file=/etc/stevedore/http-secret/secret"}
			for _, a := range want {
				if !slices.Contains(c.Args, a) {
					return fmt.Errorf("args %v lack %s", c.Args, a)
				}
			}
			if c.Image != testImage || ptr.Deref(d.Spec.Replicas, 0) != 1 {
				return fmt.Errorf("image %s replicas %d", c.Image, ptr.Deref(d.Spec.Replicas, 0))
			}
			if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef.Name != "creds" {
				return fmt.Errorf("envFrom %v, want the storage secret", c.EnvFrom)
			}
			if sc := c.SecurityContext; sc == nil || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) {
				return fmt.Errorf("container security context %v is not restricted", sc)
			}
			return nil
		}},
		{&corev1.Service{}, name, func(o client.Object) error {
			if p := o.(*corev1.Service).Spec.Ports; len(p) != 1 || p[0].Port != 5000 {
				return fmt.Errorf("ports %v", p)
			}
			return nil
		}},
	}
	for _, c := range children {
		t.Run(fmt.Sprintf("%T", c.obj), func(t *testing.T) {
			eventually(t, "child", func() error {
				if err := get(c.obj, ns, c.name); err != nil {
					return err
				}
				if err := controlledBy(c.obj, "main"); err != nil {
					return err
				}
				if c.check != nil {
					return c.check(c.obj)
				}
				return nil
			})
		})
	}
	for _, absent := range []client.Object{&policyv1.PodDisruptionBudget{}, &networkingv1.Ingress{}} {
		if err := get(absent, ns, name); !apierrors.IsNotFound(err) {
			t.Errorf("%T exists with one replica and no ingress (err %v)", absent, err)
		}
	}
	var reg v1.Registry
	eventually(t, "status endpoint", func() error {
		if err := get(&reg, ns, "main"); err != nil {
			return err
		}
		if want := "main-registry." + ns + ".svc:5000"; reg.Status.Endpoint != want {
			return fmt.Errorf("endpoint %q, want %q", reg.Status.Endpoint, want)
		}
		if !meta.IsStatusConditionTrue(reg.Status.Conditions, "AuthDisabled") {
			return fmt.Errorf("auth mode none but no AuthDisabled condition: %v", reg.Status.Conditions)
		}
		return nil
	})
}

// TestRegistryChildrenFollowSpec changes the spec and watches children follow.
func TestRegistryChildrenFollowSpec(t *testing.T) {
	ns := newNamespace(t)
	// Not mem://, which refuses replicas > 1; no secretRef, so no probe.
	createRegistry(t, ns, "follow", func(r *v1.Registry) { r.Spec.Storage.URL = "s3://follow" })
	name := "follow-registry"
	eventually(t, "deployment", func() error { return get(&appsv1.Deployment{}, ns, name) })

	steps := []struct {
		name   string
		mutate func(*v1.Registry)
		check  func() error
	}{
		{"replicas 3 adds a PDB and spreads pods", func(r *v1.Registry) { r.Spec.Replicas = ptr.To[int32](3) }, func() error {
			var d appsv1.Deployment
			if err := get(&d, ns, name); err != nil {
				return err
			}
			if ptr.Deref(d.Spec.Replicas, 0) != 3 || len(d.Spec.Template.Spec.TopologySpreadConstraints) != 1 {
				return fmt.Errorf("replicas %d, spread %v", ptr.Deref(d.Spec.Replicas, 0), d.Spec.Template.Spec.TopologySpreadConstraints)
			}
			return get(&policyv1.PodDisruptionBudget{}, ns, name)
		}},
		{"storage url reaches the args", func(r *v1.Registry) {
			r.Spec.Storage.URL = "file:///data/registry"
			r.Spec.Storage.PersistentVolumeClaim = &v1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}}
		}, func() error {
			var d appsv1.Deployment
			if err := get(&d, ns, name); err != nil {
				return err
			}
			c := registrydContainer(&d)
			if !slices.Contains(c.Args, "--storage=file:///data/registry") {
				return fmt.Errorf("args %v", c.Args)
			}
			// Temp files on the storage volume: a rename from another
			// volume fails with EXDEV.
			if !slices.Contains(c.Env, corev1.EnvVar{Name: "TMPDIR", Value: "/data/registry/_stevedore/tmp"}) {
				return fmt.Errorf("env %v", c.Env)
			}
			return nil
		}},
		{"kubernetes auth binds auth-delegator", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthKubernetes }, func() error {
			var crb rbacv1.ClusterRoleBinding
			if err := get(&crb, "", "stevedore:"+ns+":follow:auth-delegator"); err != nil {
				return err
			}
			if crb.RoleRef.Name != "system:auth-delegator" || crb.Subjects[0].Namespace != ns {
				return fmt.Errorf("binding %v", crb)
			}
			return nil
		}},
		{"back to one replica drops the PDB", func(r *v1.Registry) { r.Spec.Replicas = ptr.To[int32](1) }, func() error {
			if err := get(&policyv1.PodDisruptionBudget{}, ns, name); !apierrors.IsNotFound(err) {
				return fmt.Errorf("PDB still there (%v)", err)
			}
			return nil
		}},
		{"token audiences and bearer challenge reach the args", func(r *v1.Registry) {
			r.Spec.Auth.TokenAudiences = []string{"registry", "ci"}
			r.Spec.Auth.Challenge = "bearer"
		}, func() error {
			args := deploymentArgs(ns, name)
			if !slices.Contains(args, "--token-audiences=registry,ci") || !slices.Contains(args, "--auth-challenge=bearer") {
				return fmt.Errorf("args %v", args)
			}
			return nil
		}},
		{"htpasswd mounts its Secret as a directory", func(r *v1.Registry) {
			r.Spec.Auth.Mode = v1.AuthHtpasswd
			r.Spec.Auth.HtpasswdSecretRef = &corev1.LocalObjectReference{Name: "users"}
		}, func() error {
			var d appsv1.Deployment
			if err := get(&d, ns, name); err != nil {
				return err
			}
			c := registrydContainer(&d)
			i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "htpasswd" })
			j := slices.IndexFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "htpasswd" })
			switch {
			case i < 0 || j < 0:
				return fmt.Errorf("no htpasswd volume or mount")
			case c.VolumeMounts[i].SubPath != "":
				return fmt.Errorf("mounted with subPath %q: a rotated Secret would never reach the pod", c.VolumeMounts[i].SubPath)
			case d.Spec.Template.Spec.Volumes[j].Secret == nil || d.Spec.Template.Spec.Volumes[j].Secret.SecretName != "users":
				return fmt.Errorf("volume %+v", d.Spec.Template.Spec.Volumes[j])
			case !slices.Contains(c.Args, "--htpasswd-file="+c.VolumeMounts[i].MountPath+"/htpasswd"),
				!slices.Contains(c.Args, "--auth=htpasswd"), slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--token-audiences") }):
				return fmt.Errorf("args %v", c.Args)
			}
			return nil
		}},
		{"auth none removes the binding", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthNone }, func() error {
			if err := get(&rbacv1.ClusterRoleBinding{}, "", "stevedore:"+ns+":follow:auth-delegator"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("binding still there (%v)", err)
			}
			return nil
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			updateRegistry(t, ns, "follow", step.mutate)
			eventually(t, step.name, step.check)
		})
	}
}

// TestRegistryChildrenComeBack deletes or edits children by hand.
func TestRegistryChildrenComeBack(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "heal", nil)
	name := "heal-registry"
	for _, obj := range []client.Object{&corev1.Service{}, &appsv1.Deployment{}, &rbacv1.Role{}, &corev1.ServiceAccount{}} {
		t.Run(fmt.Sprintf("%T", obj), func(t *testing.T) {
			eventually(t, "created", func() error { return get(obj, ns, name) })
			uid := obj.GetUID()
			if err := env.Client.Delete(context.Background(), obj); err != nil {
				t.Fatal(err)
			}
			eventually(t, "recreated", func() error {
				if err := get(obj, ns, name); err != nil {
					return err
				}
				if obj.GetUID() == uid {
					return fmt.Errorf("still the old object")
				}
				return nil
			})
		})
	}
	t.Run("edited deployment image is put back", func(t *testing.T) {
		var d appsv1.Deployment
		eventually(t, "edit", func() error {
			if err := get(&d, ns, name); err != nil {
				return err
			}
			d.Spec.Template.Spec.Containers[0].Image = "evil.example/registry:latest"
			return env.Client.Update(context.Background(), &d)
		})
		eventually(t, "image restored", func() error {
			if err := get(&d, ns, name); err != nil {
				return err
			}
			if img := registrydContainer(&d).Image; img != testImage {
				return fmt.Errorf("image %s", img)
			}
			return nil
		})
	})
}

// TestHTTPSecretIsStable checks the upload-signing secret survives reconciles.
func TestHTTPSecretIsStable(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "stable", func(r *v1.Registry) { r.Spec.Storage.URL = "s3://stable" })
	var before corev1.Secret
	eventually(t, "secret", func() error { return get(&before, ns, "stable-registry-http-secret") })
	updateRegistry(t, ns, "stable", func(r *v1.Registry) { r.Spec.Replicas = ptr.To[int32](2) })
	eventually(t, "reconciled", func() error { return get(&policyv1.PodDisruptionBudget{}, ns, "stable-registry") })
	var after corev1.Secret
	if err := get(&after, ns, "stable-registry-http-secret"); err != nil {
		t.Fatal(err)
	}
	if string(after.Data["secret"]) != string(before.Data["secret"]) {
		t.Fatal("the HTTP secret changed across reconciles")
	}
}

// TestStorageReady probes real buckets: a good one and ones that cannot work.
func TestStorageReady(t *testing.T) {
	ns := newNamespace(t)
	notADir := filepath.Join(t.TempDir(), "file")
	if err := exec.Command("touch", notADir).Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, url, reason, message string
		status                     metav1.ConditionStatus
	}{
		{"mem", "mem://", "ProbeSucceeded", "wrote, read and deleted", metav1.ConditionTrue},
		{"file", "file://" + bucketDir(t), "ProbeSucceeded", "wrote, read and deleted", metav1.ConditionTrue},
		{"file-under-a-file", "file://" + notADir + "/bucket", "ProbeFailed", "not a directory", metav1.ConditionFalse},
		// No secretRef: the pod's own identity, never the operator's.
		{"cloud-without-secret", "azblob://nowhere", "ProbedByPods", "pod's identity", metav1.ConditionTrue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			createRegistry(t, ns, tc.name, func(r *v1.Registry) { r.Spec.Storage.URL = tc.url })
			eventually(t, "StorageReady", func() error {
				var reg v1.Registry
				if err := get(&reg, ns, tc.name); err != nil {
					return err
				}
				c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStorageReady)
				if c == nil || c.Status != tc.status || c.Reason != tc.reason || !strings.Contains(c.Message, tc.message) {
					return fmt.Errorf("StorageReady = %+v, want %s/%s with %q", c, tc.status, tc.reason, tc.message)
				}
				return nil
			})
		})
	}
	// An S3 bucket (versitygw) probed with the keys of the Registry's
	// secretRef, never the operator's own environment.
	t.Run("s3 with secretRef", func(t *testing.T) {
		srv := storageservers.Start(t, storageservers.S3)
		for _, tc := range []struct {
			name, secret, reason, message string
		}{
			{"s3-good-keys", srv.Env["AWS_SECRET_ACCESS_KEY"], "ProbeSucceeded", "wrote, read and deleted"},
			{"s3-wrong-keys", "wrong", "ProbeFailed", "SignatureDoesNotMatch"},
		} {
			data := map[string]string{}
			for k, v := range srv.Env {
				data[k] = v
			}
			data["AWS_SECRET_ACCESS_KEY"] = tc.secret
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: tc.name, Namespace: ns}, StringData: data}
			if err := env.Client.Create(context.Background(), sec); err != nil {
				t.Fatal(err)
			}
			createRegistry(t, ns, tc.name, func(r *v1.Registry) {
				r.Spec.Storage.URL = srv.URL
				r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: tc.name}
			})
			eventually(t, "StorageReady", func() error {
				var reg v1.Registry
				if err := get(&reg, ns, tc.name); err != nil {
					return err
				}
				c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStorageReady)
				if c == nil || c.Reason != tc.reason || !strings.Contains(c.Message, tc.message) {
					return fmt.Errorf("%s: StorageReady = %+v, want %s with %q", tc.name, c, tc.reason, tc.message)
				}
				return nil
			})
		}
	})
	t.Run("missing credentials secret", func(t *testing.T) {
		createRegistry(t, ns, "nocreds", func(r *v1.Registry) {
			r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: "absent"}
		})
		eventually(t, "StorageReady", func() error {
			var reg v1.Registry
			if err := get(&reg, ns, "nocreds"); err != nil {
				return err
			}
			c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStorageReady)
			if c == nil || c.Reason != "CredentialsMissing" || !strings.Contains(c.Message, "absent") {
				return fmt.Errorf("StorageReady = %+v", c)
			}
			return nil
		})
	})
}

// TestAvailabilityFlowsIntoReady plays kube-controller-manager's part (there
// is none in envtest): it marks the Deployment available, then unavailable.
func TestAvailabilityFlowsIntoReady(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "avail", nil)
	ready := func(want metav1.ConditionStatus, readyReplicas int32) func() error {
		return func() error {
			var reg v1.Registry
			if err := get(&reg, ns, "avail"); err != nil {
				return err
			}
			c := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionReady)
			if c == nil || c.Status != want || reg.Status.ReadyReplicas != readyReplicas {
				return fmt.Errorf("Ready = %+v, readyReplicas %d", c, reg.Status.ReadyReplicas)
			}
			return nil
		}
	}
	eventually(t, "not ready before the rollout", ready(metav1.ConditionFalse, 0))
	setDeploymentStatus(t, ns, "avail-registry", corev1.ConditionTrue, 1)
	eventually(t, "ready once available", ready(metav1.ConditionTrue, 1))
	setDeploymentStatus(t, ns, "avail-registry", corev1.ConditionFalse, 0)
	eventually(t, "not ready when unavailable", ready(metav1.ConditionFalse, 0))
}

func setDeploymentStatus(t *testing.T, ns, name string, available corev1.ConditionStatus, n int32) {
	t.Helper()
	eventually(t, "deployment status", func() error {
		var d appsv1.Deployment
		if err := get(&d, ns, name); err != nil {
			return err
		}
		now := metav1.Now()
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1,
			ReadyReplicas: n, AvailableReplicas: n, UnavailableReplicas: 1 - n,
			Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: available, Reason: "MinimumReplicas", LastUpdateTime: now, LastTransitionTime: now},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", LastUpdateTime: now, LastTransitionTime: now},
			},
		}
		return env.Client.Status().Update(context.Background(), &d)
	})
}

// TestRegistryDeletionRemovesClusterBinding checks the finalizer path.
func TestRegistryDeletionRemovesClusterBinding(t *testing.T) {
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "gone", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthKubernetes })
	crbName := "stevedore:" + ns + ":gone:auth-delegator"
	eventually(t, "binding", func() error { return get(&rbacv1.ClusterRoleBinding{}, "", crbName) })
	if err := env.Client.Delete(context.Background(), reg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binding and registry gone", func() error {
		if err := get(&rbacv1.ClusterRoleBinding{}, "", crbName); !apierrors.IsNotFound(err) {
			return fmt.Errorf("binding: %v", err)
		}
		if err := get(&v1.Registry{}, ns, "gone"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("registry: %v", err)
		}
		return nil
	})
}

// TestPrinterColumns runs the real kubectl against the API server.
func TestPrinterColumns(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "cols", nil)
	eventually(t, "endpoint", func() error {
		var reg v1.Registry
		if err := get(&reg, ns, "cols"); err != nil {
			return err
		}
		if reg.Status.Endpoint == "" {
			return fmt.Errorf("no endpoint yet")
		}
		return nil
	})
	repo := &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: "cols.team.app", Namespace: ns},
		Spec: v1.RepositorySpec{Registry: "cols", Name: "team/app"}}
	if err := env.Client.Create(context.Background(), repo); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := env.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		resource string
		header   []string
		row      []string
	}{
		{"registries", []string{"NAME", "READY", "ENDPOINT", "REPLICAS", "AGE"}, []string{"cols", "cols-registry." + ns + ".svc:5000"}},
		{"repositories", []string{"NAME", "REGISTRY", "NAME", "TAGS", "AGE"}, []string{"cols.team.app", "cols", "team/app"}},
		{"reg", []string{"READY", "ENDPOINT"}, []string{"cols"}},
		{"repo", []string{"REGISTRY", "TAGS"}, []string{"team/app"}},
	}
	for _, tc := range tests {
		t.Run(tc.resource, func(t *testing.T) {
			out, err := exec.Command(filepath.Join(env.AssetsDir(), "kubectl"), "--kubeconfig", kubeconfig,
				"get", tc.resource, "-n", ns).CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) < 2 {
				t.Fatalf("kubectl printed %q", out)
			}
			if got := strings.Fields(lines[0]); !containsInOrder(got, tc.header) {
				t.Errorf("header %v, want %v", got, tc.header)
			}
			if got := strings.Fields(lines[1]); !containsInOrder(got, tc.row) {
				t.Errorf("row %v, want %v", got, tc.row)
			}
		})
	}
}

func containsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestHtpasswdSecretChecked: in htpasswd mode the Registry says whether its
// Secret of users is there and usable, and is not Ready without it.
func TestHtpasswdSecretChecked(t *testing.T) {
	ns := newNamespace(t)
	bcryptLine := "alice:$2y$05$O7GyIH3cA1vH0o3i0kP3b.0Jm0z9dJ9zGx0zj2pP2bqf1G5m3b5mK\n"
	secrets := map[string]string{"users-ok": bcryptLine, "users-md5": "bob:$apr1$abc$def\n"}
	for name, data := range secrets {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{"htpasswd": []byte(data)}}
		if err := env.Client.Create(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		registry, secret, reason string
		status                   metav1.ConditionStatus
	}{
		{"found", "users-ok", controllers.ReasonHtpasswdSecretFound, metav1.ConditionTrue},
		{"missing", "no-such-secret", controllers.ReasonHtpasswdSecretMissing, metav1.ConditionFalse},
		{"invalid", "users-md5", controllers.ReasonHtpasswdSecretInvalid, metav1.ConditionFalse},
	}
	for _, tc := range tests {
		t.Run(tc.registry, func(t *testing.T) {
			createRegistry(t, ns, tc.registry, func(r *v1.Registry) {
				r.Spec.Auth = v1.AuthSpec{Mode: v1.AuthHtpasswd, HtpasswdSecretRef: &corev1.LocalObjectReference{Name: tc.secret}}
			})
			eventually(t, "AuthReady", func() error {
				var reg v1.Registry
				if err := get(&reg, ns, tc.registry); err != nil {
					return err
				}
				c := meta.FindStatusCondition(reg.Status.Conditions, controllers.ConditionAuthReady)
				if c == nil || c.Status != tc.status || c.Reason != tc.reason {
					return fmt.Errorf("AuthReady %+v, want %s %s", c, tc.status, tc.reason)
				}
				ready := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionReady)
				if tc.status == metav1.ConditionFalse && (ready == nil || !strings.Contains(ready.Message, "AuthReady is False")) {
					return fmt.Errorf("Ready %+v does not name AuthReady", ready)
				}
				return nil
			})
		})
	}
}

// TestFileStorageOnAClaim: a file:// bucket lives on a PersistentVolumeClaim
// the operator creates (or the user names), and a pod-template change (a new
// image, as every operator upgrade brings) keeps the same claim, so the
// blobs survive the rollout.
func TestFileStorageOnAClaim(t *testing.T) {
	ns := newNamespace(t)
	size := resource.MustParse("3Gi")
	tests := []struct {
		name      string
		pvc       v1.PersistentVolumeClaimSpec
		claim     string
		createdBy bool // the operator creates the claim
	}{
		{"created", v1.PersistentVolumeClaimSpec{Size: &size}, "created-registry-storage", true},
		{"named", v1.PersistentVolumeClaimSpec{ClaimName: "my-blobs"}, "my-blobs", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			createRegistry(t, ns, tc.name, func(r *v1.Registry) {
				r.Spec.Storage.URL = "file:///var/lib/stevedore"
				r.Spec.Storage.PersistentVolumeClaim = &tc.pvc
			})
			volume := func(d *appsv1.Deployment) (*corev1.Volume, error) {
				i := slices.IndexFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "storage" })
				if i < 0 {
					return nil, fmt.Errorf("no storage volume in %v", d.Spec.Template.Spec.Volumes)
				}
				v := &d.Spec.Template.Spec.Volumes[i]
				if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != tc.claim {
					return nil, fmt.Errorf("storage volume %+v, want claim %s", v.VolumeSource, tc.claim)
				}
				return v, nil
			}
			var d appsv1.Deployment
			eventually(t, "deployment on the claim", func() error {
				if err := get(&d, ns, tc.name+"-registry"); err != nil {
					return err
				}
				if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					return fmt.Errorf("strategy %s: a ReadWriteOnce volume cannot be mounted by old and new pods at once", d.Spec.Strategy.Type)
				}
				_, err := volume(&d)
				return err
			})
			var claim corev1.PersistentVolumeClaim
			if tc.createdBy {
				eventually(t, "claim", func() error { return get(&claim, ns, tc.claim) })
				if got := claim.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(size) != 0 {
					t.Errorf("claim asks for %s, want %s", got.String(), size.String())
				}
				if len(claim.OwnerReferences) != 0 {
					t.Errorf("claim has owner references %v: deleting the Registry would delete the blobs", claim.OwnerReferences)
				}
			} else if err := get(&claim, ns, tc.claim); !apierrors.IsNotFound(err) {
				t.Errorf("the operator made the claim the user names (err %v)", err)
			}

			updateRegistry(t, ns, tc.name, func(r *v1.Registry) { r.Spec.Image = "example.test/stevedore:next" })
			eventually(t, "rolled out on the same claim", func() error {
				if err := get(&d, ns, tc.name+"-registry"); err != nil {
					return err
				}
				if img := registrydContainer(&d).Image; img != "example.test/stevedore:next" {
					return fmt.Errorf("image %s", img)
				}
				_, err := volume(&d)
				return err
			})
			if tc.createdBy {
				var after corev1.PersistentVolumeClaim
				if err := get(&after, ns, tc.claim); err != nil || after.UID != claim.UID {
					t.Errorf("claim after the rollout: %v, uid %s, want the same object %s", err, after.UID, claim.UID)
				}
			}
		})
	}
}
