package controllers_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

const (
	repositoryFinalizer = "stevedore.dev/deletion-policy"
	cleanupFinalizer    = "stevedore.dev/repository-cleanup"
	legacyFinalizer     = "stevedore.dev/cluster-resources"
)

// wantMeta waits until obj (re-read into itself) has exactly the finalizers
// want and, when owner is set, an owner reference to it.
func wantMeta(t *testing.T, obj client.Object, ns, name string, owner *v1.Registry, want ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s: finalizers %v, owned by %v", name, want, owner != nil), func() error {
		if err := get(obj, ns, name); err != nil {
			return err
		}
		if got := obj.GetFinalizers(); !slices.Equal(got, want) {
			return fmt.Errorf("finalizers %v", got)
		}
		if owner != nil && !slices.ContainsFunc(obj.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
			return r.UID == owner.UID && r.Kind == "Registry" && r.Name == owner.Name
		}) {
			return fmt.Errorf("owner references %v", obj.GetOwnerReferences())
		}
		return nil
	})
}

// TestFinalizersOnlyWhereTheOperatorActs: a Registry and its Repositories
// carry a finalizer only while the operator must act before they go (a
// Repository whose deletionPolicy: Delete must clean the bucket, and its
// Registry, which says where the bucket is); every Repository is owned by
// its Registry; the finalizers of older operators are removed.
func TestFinalizersOnlyWhereTheOperatorActs(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Storage.URL = "file://" + bucketDir(t)
		r.Spec.Auth.Mode = v1.AuthKubernetes
		r.Finalizers = []string{legacyFinalizer}
	})
	// As registryd or an older operator made it: no owner, the finalizer.
	kept := &v1.Repository{
		ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: ns, Finalizers: []string{repositoryFinalizer}},
		Spec:       v1.RepositorySpec{Registry: "main", Name: "kept", DeletionPolicy: v1.DeletionRetain},
	}
	if err := env.Client.Create(ctx, kept); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binding", func() error { return get(&rbacv1.ClusterRoleBinding{}, "", "stevedore:"+ns+":main:auth-delegator") })
	wantMeta(t, &v1.Repository{}, ns, "kept", reg)
	wantMeta(t, &v1.Registry{}, ns, "main", nil)

	createRepository(t, ns, "gone", "main", "gone", v1.DeletionDelete)
	wantMeta(t, &v1.Repository{}, ns, "gone", reg, repositoryFinalizer)
	wantMeta(t, &v1.Registry{}, ns, "main", nil, cleanupFinalizer)

	if err := env.Client.Delete(ctx, &v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: "gone", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	wantMeta(t, &v1.Registry{}, ns, "main", nil)
}

// TestRegistryDeletionCleansItsRepositories deletes a Registry as a deleted
// namespace does: its storage Secret first. Its Repositories go with it,
// the Delete one after deleting its content with the credentials the
// operator read while the Secret was there.
func TestRegistryDeletionCleansItsRepositories(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	dir := bucketDir(t)
	storageURL := "file://" + dir
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: ns},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "unused-by-file"},
	}
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Storage.URL = storageURL
		r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: "creds"}
	})
	b, err := bucket.Open(ctx, storageURL, bucket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	keys := func(repo string) []string {
		return []string{"repos/" + repo + "/_manifests/sha256/" + strings.Repeat("d", 64), "repos/" + repo + "/_tags/latest"}
	}
	for _, k := range append(keys("gone"), keys("kept")...) {
		if err := b.WriteAll(ctx, k, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	createRepository(t, ns, "gone", "main", "gone", v1.DeletionDelete)
	createRepository(t, ns, "kept", "main", "kept", v1.DeletionRetain)
	wantMeta(t, &v1.Repository{}, ns, "gone", nil, repositoryFinalizer)
	wantMeta(t, &v1.Registry{}, ns, "main", nil, cleanupFinalizer)

	if err := env.Client.Delete(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, &v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Registry and Repositories gone", func() error {
		for _, obj := range []struct {
			o    client.Object
			name string
		}{{&v1.Repository{}, "gone"}, {&v1.Repository{}, "kept"}, {&v1.Registry{}, "main"}} {
			if err := get(obj.o, ns, obj.name); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s still there (%v)", obj.name, err)
			}
		}
		return nil
	})
	for _, k := range keys("gone") {
		if ok, _ := b.Exists(ctx, k); ok {
			t.Errorf("%s survived deletionPolicy Delete", k)
		}
	}
	for _, k := range keys("kept") {
		if ok, _ := b.Exists(ctx, k); !ok {
			t.Errorf("%s is gone, but deletionPolicy Retain keeps it", k)
		}
	}
	// Gone with its Registry, not by a person: the next Registry on the
	// bucket imports it again.
	if deleted, err := tags.NewBucket(b).IsDeleted(ctx, "kept"); err != nil || deleted {
		t.Errorf("the retained repository got a tombstone when its Registry was deleted (%v)", err)
	}
}

// TestRegistryGoesWithoutTheOperator: with the operator gone (uninstalled,
// or not running), a Registry in kubernetes auth mode and its Retain
// Repositories are deleted at once, so their namespace is never stuck; the
// auth-delegator binding left behind is collected when the operator runs
// again.
func TestRegistryGoesWithoutTheOperator(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Auth.Mode = v1.AuthKubernetes })
	createRepository(t, ns, "kept", "main", "kept", v1.DeletionRetain)
	crbName := "stevedore:" + ns + ":main:auth-delegator"
	eventually(t, "binding", func() error { return get(&rbacv1.ClusterRoleBinding{}, "", crbName) })
	wantMeta(t, &v1.Repository{}, ns, "kept", reg)

	stopOperator()
	restarted := false
	defer func() {
		if !restarted {
			startOperatorAgain(t)
		}
	}()
	for _, obj := range []client.Object{
		&v1.Repository{ObjectMeta: metav1.ObjectMeta{Name: "kept", Namespace: ns}},
		&v1.Registry{ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: ns}},
	} {
		if err := env.Client.Delete(ctx, obj); err != nil {
			t.Fatal(err)
		}
		eventually(t, obj.GetName()+" gone without the operator", func() error {
			if err := get(obj, ns, obj.GetName()); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (finalizers %v): %v", obj.GetFinalizers(), err)
			}
			return nil
		})
	}
	startOperatorAgain(t)
	restarted = true
	eventually(t, "orphaned binding collected", func() error {
		if err := get(&rbacv1.ClusterRoleBinding{}, "", crbName); !apierrors.IsNotFound(err) {
			return fmt.Errorf("binding: %v", err)
		}
		return nil
	})
}

// TestDeleteRegistries is the chart's pre-delete hook (`manager
// delete-registries`): it deletes the selected Registries and returns once
// the operator has finished with them, the bucket cleaned for a Delete
// Repository and the auth-delegator binding gone; other Registries stay.
func TestDeleteRegistries(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	dir := bucketDir(t)
	chartLabels := map[string]string{"app.kubernetes.io/instance": "stevedore", "app.kubernetes.io/component": "registry"}
	createRegistry(t, ns, "chart", func(r *v1.Registry) {
		r.Labels = chartLabels
		r.Spec.Storage.URL = "file://" + dir
		r.Spec.Auth.Mode = v1.AuthKubernetes
	})
	createRegistry(t, ns, "other", nil)
	createRepository(t, ns, "gone", "chart", "gone", v1.DeletionDelete)
	wantMeta(t, &v1.Registry{}, ns, "chart", nil, cleanupFinalizer)
	crbName := "stevedore:" + ns + ":chart:auth-delegator"
	eventually(t, "binding", func() error { return get(&rbacv1.ClusterRoleBinding{}, "", crbName) })
	b, err := bucket.Open(ctx, "file://"+dir, bucket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	key := "repos/gone/_tags/latest"
	if err := b.WriteAll(ctx, key, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = controllers.DeleteRegistries(wctx, env.Client, controllers.DeleteRegistriesOptions{
		Namespace: ns, Selector: labels.SelectorFromSet(chartLabels), Poll: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing left to wait for once it returns.
	for _, obj := range []struct {
		o        client.Object
		ns, name string
	}{{&v1.Registry{}, ns, "chart"}, {&v1.Repository{}, ns, "gone"}, {&rbacv1.ClusterRoleBinding{}, "", crbName}} {
		if err := get(obj.o, obj.ns, obj.name); !apierrors.IsNotFound(err) {
			t.Errorf("%s is still there (%v)", obj.name, err)
		}
	}
	if ok, _ := b.Exists(ctx, key); ok {
		t.Errorf("%s survived deletionPolicy Delete", key)
	}
	if err := get(&v1.Registry{}, ns, "other"); err != nil {
		t.Errorf("a Registry the selector does not match: %v", err)
	}
}

// TestOwnerAndFinalizerRaceTagPushes: while the operator adds owner
// references and finalizers to 10 Repositories, pushes write their status
// concurrently (as registryd's replicas do). Every Repository ends owned and
// finalized, and no pushed tag is lost.
func TestOwnerAndFinalizerRaceTagPushes(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Storage.URL = "file://" + bucketDir(t) })
	const repos, pushes = 10, 10
	var wg sync.WaitGroup
	errs := make(chan error, repos)
	for i := range repos {
		name := fmt.Sprintf("app-%d", i)
		createRepository(t, ns, name, "main", name, v1.DeletionDelete)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range pushes {
				err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
					var repo v1.Repository
					if err := get(&repo, ns, name); err != nil {
						return err
					}
					repo.Status.SetTag(v1.TagStatus{Name: fmt.Sprintf("v%d", p), Digest: "sha256:" + strings.Repeat("e", 64), PushedAt: metav1.Now()})
					return env.Client.Status().Update(ctx, &repo)
				})
				if err != nil {
					errs <- fmt.Errorf("%s: push %d: %w", name, p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range repos {
		name := fmt.Sprintf("app-%d", i)
		var repo v1.Repository
		wantMeta(t, &repo, ns, name, reg, repositoryFinalizer)
		if repo.Status.TagCount != pushes || len(repo.Status.Tags) != pushes {
			t.Errorf("%s holds %d tags (tagCount %d), want %d", name, len(repo.Status.Tags), repo.Status.TagCount, pushes)
		}
	}
}
