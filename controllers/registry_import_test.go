package controllers_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// TestJournalImport points a new Registry at a bucket that already holds
// repositories, as after losing a cluster, and expects them back.
func TestJournalImport(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	storageURL := "file://" + bucketDir(t)
	b, err := bucket.Open(ctx, storageURL, bucket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	journal := tags.NewBucket(b)
	want := map[string]map[string]digest.Digest{
		"team/app": {"v1": digest.FromString("a1"), "latest": digest.FromString("a2")},
		"team":     {"stable": digest.FromString("b1")},
		"tools/ci": {},
	}
	for path, tagSet := range want {
		// A repository the layout knows of even without tags: its manifest link.
		if err := b.WriteAll(ctx, "repos/"+path+"/_manifests/sha256/"+digest.FromString(path).Encoded(), []byte("{}"), nil); err != nil {
			t.Fatal(err)
		}
		for tag, d := range tagSet {
			if err := journal.Put(ctx, path, tag, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: 2}); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func() error {
		for path, tagSet := range want {
			var repo v1.Repository
			if err := get(&repo, ns, v1.RepositoryObjectName("main", path)); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if len(repo.Status.Tags) != len(tagSet) {
				return fmt.Errorf("%s has %d tags, want %d", path, len(repo.Status.Tags), len(tagSet))
			}
			for tag, d := range tagSet {
				if got, ok := repo.Status.FindTag(tag); !ok || got.Digest != d.String() {
					return fmt.Errorf("%s:%s = %+v", path, tag, got)
				}
			}
		}
		return nil
	}
	reg := createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Storage.URL = storageURL })
	eventually(t, "imported", check)
	eventually(t, "importedFrom", func() error {
		var r v1.Registry
		if err := get(&r, ns, "main"); err != nil {
			return err
		}
		if r.Status.ImportedFrom != storageURL+"#" {
			return fmt.Errorf("importedFrom %q", r.Status.ImportedFrom)
		}
		return nil
	})

	// A Repository deleted while its Registry lives stays deleted.
	gone := &v1.Repository{}
	if err := get(gone, ns, v1.RepositoryObjectName("main", "tools/ci")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	updateRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Replicas = new(int32) }) // any reconcile
	eventually(t, "deleted repository not resurrected", func() error {
		if err := get(&v1.Repository{}, ns, gone.Name); !apierrors.IsNotFound(err) {
			return fmt.Errorf("tools/ci: %v", err)
		}
		return nil
	})

	// The cluster is rebuilt: every object goes, the Registry is applied again.
	if err := env.Client.DeleteAllOf(ctx, &v1.Repository{}, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, reg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all gone", func() error {
		var list v1.RepositoryList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) > 0 {
			return fmt.Errorf("%d repositories left (%v)", len(list.Items), err)
		}
		if err := get(&v1.Registry{}, ns, "main"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("registry: %v", err)
		}
		return nil
	})
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Storage.URL = storageURL })
	eventually(t, "imported again", check)
}
