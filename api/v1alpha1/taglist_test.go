package v1alpha1_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestTagListIsOneField: status.tags is an atomic list, so the API
// server's managedFields hold one entry for it however many tags there
// are (as a map list it held every tag's fields, 40 % of the object, and
// computing them doubled the cost of each status update). A cluster
// upgraded from the map-list CRD, whose objects still carry a key per tag
// in managedFields, keeps accepting status updates.
func TestTagListIsOneField(t *testing.T) {
	ctx := context.Background()
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "repositories.stevedore.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	installed := crd.DeepCopy()
	tagsSchema := []string{"spec", "versions", "0", "schema", "openAPIV3Schema", "properties", "status", "properties", "tags"}
	if got := nested(t, crd.Object, tagsSchema...)["x-kubernetes-list-type"]; got != "atomic" {
		t.Fatalf("status.tags has x-kubernetes-list-type %v, want atomic", got)
	}

	repo := newRepository("taglist", "taglist")
	if err := env.Client.Create(ctx, repo); err != nil {
		t.Fatal(err)
	}
	round := 0
	// update moves every tag and reports whether managedFields hold a key
	// per tag.
	update := func() bool {
		t.Helper()
		round++
		repo.Status.Tags = nil
		for i := range 20 {
			repo.Status.SetTag(v1.TagStatus{Name: fmt.Sprintf("t%02d", i), Digest: fmt.Sprintf("sha256:%064d", round), PushedAt: metav1.Now()})
		}
		if err := env.Client.Status().Update(ctx, repo); err != nil {
			t.Fatalf("status update %d: %v", round, err)
		}
		raw, err := json.Marshal(repo.ManagedFields)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(raw), `k:{\"name\":`)
	}
	if update() {
		t.Fatalf("managedFields hold a key per tag: %s", managedStatus(repo))
	}

	// The CRD as it was (a map list keyed by name), and an update under it.
	old := crd.DeepCopy()
	s := nested(t, old.Object, tagsSchema...)
	s["x-kubernetes-list-type"], s["x-kubernetes-list-map-keys"] = "map", []any{"name"}
	if err := env.Client.Update(ctx, old); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		t.Helper()
		cur := &unstructured.Unstructured{}
		cur.SetGroupVersionKind(installed.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(installed), cur); err != nil {
			t.Fatal(err)
		}
		cur.Object["spec"] = installed.Object["spec"]
		if err := env.Client.Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(restore) // also when the test stops early
	waitFor(t, "the map-list schema to take effect", update)

	// Upgraded: the object's managedFields still name every tag; updates
	// succeed, and the first one under the atomic schema drops the keys.
	restore()
	waitFor(t, "the atomic schema to take effect", func() bool { return !update() })
	t.Logf("after the upgrade, %d status updates; managedFields for status: %s", round, managedStatus(repo))
}

func nested(t *testing.T, obj map[string]any, path ...string) map[string]any {
	t.Helper()
	var cur any = obj
	for _, p := range path {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			var i int
			if _, err := fmt.Sscan(p, &i); err != nil || i >= len(c) {
				t.Fatalf("no %s in %v", p, path)
			}
			cur = c[i]
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		t.Fatalf("no object at %v", path)
	}
	return m
}

func managedStatus(repo *v1.Repository) string {
	for _, m := range repo.ManagedFields {
		if m.Subresource == "status" && m.FieldsV1 != nil {
			return string(m.FieldsV1.Raw)
		}
	}
	return "(none)"
}

// waitFor polls cond until it holds, for up to 30 s (a CRD change reaches
// the API server's handlers asynchronously).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
