package controllers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// TestJournalImport points a new Registry at a bucket that already holds
// repositories, deletes one on purpose, restarts the operator (no second
// import), loses every object as a lost cluster would, and expects all but
// the deleted one back in a new Registry.
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
		"team/big": {}, // past one object: imported into TagShards
	}
	for i := range 300 {
		want["team/big"][fmt.Sprintf("ci-%03d", i)] = digest.FromString(fmt.Sprint(i))
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
	check := func(want map[string]map[string]digest.Digest) func() error {
		return func() error {
			for path, tagSet := range want {
				var repo v1.Repository
				if err := get(&repo, ns, v1.RepositoryObjectName("main", path)); err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				tree := tagTree(t, &repo)
				if all := tree.All(); len(all) != len(tagSet) || int(repo.Status.TagCount) != len(tagSet) {
					return fmt.Errorf("%s has %d tags (tagCount %d), want %d", path, len(all), repo.Status.TagCount, len(tagSet))
				}
				if repo.Status.TagsSplit != (len(tagSet) > v1.MaxTagsPerObject) {
					return fmt.Errorf("%s: %d tags, tagsSplit %v", path, len(tagSet), repo.Status.TagsSplit)
				}
				for tag, d := range tagSet {
					if got, ok := tree.Find(tag); !ok || got.Digest != d.String() {
						return fmt.Errorf("%s:%s = %+v", path, tag, got)
					}
				}
			}
			return nil
		}
	}
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Storage.URL = storageURL })
	eventually(t, "imported", check(want))

	// A Repository a person deletes (Retain, so without a finalizer) leaves
	// a tombstone once the operator sees it go, and stays deleted.
	gone := &v1.Repository{}
	if err := get(gone, ns, v1.RepositoryObjectName("main", "tools/ci")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted", func() error {
		if err := get(&v1.Repository{}, ns, gone.Name); !apierrors.IsNotFound(err) {
			return fmt.Errorf("tools/ci: %v", err)
		}
		return nil
	})
	eventually(t, "tombstone", func() error {
		if deleted, err := journal.IsDeleted(ctx, "tools/ci"); err != nil || !deleted {
			return fmt.Errorf("no tombstone for tools/ci (%v)", err)
		}
		return nil
	})
	delete(want, "tools/ci")

	// An operator restart imports nothing again: the import is recorded
	// in the Registry's status. Objects deleted while it was down stay
	// deleted.
	deleteAll := func() {
		var list v1.RepositoryList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for i := range list.Items {
			if err := env.Client.Delete(ctx, &list.Items[i]); client.IgnoreNotFound(err) != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "all gone", func() error {
			if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) > 0 {
				return fmt.Errorf("%d repositories left (%v)", len(list.Items), err)
			}
			return nil
		})
	}
	// The import is recorded in the status patch at the end of the pass
	// that created the Repositories, so it may land just after them.
	var reg v1.Registry
	eventually(t, "import recorded", func() error {
		if err := get(&reg, ns, "main"); err != nil || reg.Status.Storage == nil || reg.Status.Storage.JournalImportedFrom != storageURL+"#" {
			return fmt.Errorf("status.storage %+v (%v), want journalImportedFrom %s#", reg.Status.Storage, err, storageURL)
		}
		return nil
	})
	stopOperator()
	deleteAll()
	startOperatorAgain(t)
	updateRegistry(t, ns, "main", func(r *v1.Registry) { r.Labels = map[string]string{"touched": "yes"} }) // a reconcile
	time.Sleep(2 * time.Second)
	var list v1.RepositoryList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) > 0 {
		t.Fatalf("an operator restart imported %d repositories again (%v)", len(list.Items), err)
	}

	// The cluster is lost with its Registry, none of it seen going by an
	// operator; a new Registry over the bucket gets everything back but
	// the deliberately deleted repository.
	stopOperator()
	if err := env.Client.Delete(ctx, &reg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Registry gone", func() error {
		if err := get(&v1.Registry{}, ns, "main"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	startOperatorAgain(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Storage.URL = storageURL })
	eventually(t, "imported into the new Registry", check(want))
	if err := get(&v1.Repository{}, ns, gone.Name); !apierrors.IsNotFound(err) {
		t.Fatalf("the deliberately deleted tools/ci came back (%v)", err)
	}
}

// tagTree reads every tag of repo, wherever they are (status or TagShards).
func tagTree(t testing.TB, repo *v1.Repository) v1.TagTree {
	t.Helper()
	var list v1.TagShardList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(repo.Namespace),
		client.MatchingLabels{v1.LabelRepositoryUID: string(repo.UID)}); err != nil {
		t.Fatal(err)
	}
	return v1.NewTagTree(repo, list.Items)
}
