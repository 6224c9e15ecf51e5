package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestQuotaAcrossReplicas: three registryd processes serve one Registry
// (envtest API server, one file bucket) whose Repository has a quota of
// 1 MiB. 20 pushers of images of 64 KiB (about 15 fit: the tags stay in
// the Repository's status) or of 16 KiB (about 60 fit: the tags split
// over TagShards, and the quota is kept by reservations in status.usage),
// spread over the replicas: exactly as many as fit are accepted, the rest
// get DENIED naming the quota, usage never passes the quota and equals the
// bytes counted independently from what the registry serves for each
// tag. crane shows the refusal to its user.
func TestQuotaAcrossReplicas(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name             string
		layerBytes, each int
	}{{"status", 64 << 10, 2}, {"split", 16 << 10, 4}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			quotaAcrossReplicas(t, "quota-"+tc.name, tc.layerBytes, tc.each)
		})
	}
}

func quotaAcrossReplicas(t *testing.T, ns string, layerBytes, each int) {
	env := kubeEnv(t)
	ctx := t.Context()
	const regName, repo = "reg", "team/app"
	const quota, pushers = 1 << 20, 20
	kubeRegistry(t, ns, regName, v1.RegistrySpec{})
	key := client.ObjectKey{Namespace: ns, Name: v1.RepositoryObjectName(regName, repo)}
	if err := env.Client.Create(ctx, &v1.Repository{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: key.Name},
		Spec: v1.RepositorySpec{Registry: regName, Name: repo, Quota: &v1.RepositoryQuota{Bytes: resource.NewQuantity(quota, resource.BinarySI)}}}); err != nil {
		t.Fatal(err)
	}
	replicas := kubeReplicas(t, ns, regName, 3)
	base := func(i int) string { return replicas[i%3].url() }

	images := make([][]byte, pushers*each)
	for i := range images {
		images[i], _ = randomImage(t, base(i), repo, layerBytes)
	}
	perImage := int64(len(images[0]) + 64 + layerBytes)
	var accepted, denied atomic.Int64
	var wg sync.WaitGroup
	for p := range pushers {
		wg.Go(func() {
			for i := p * each; i < (p+1)*each; i++ {
				status, body, err := send(ctx, "PUT", base(i)+"/v2/"+repo+"/manifests/t"+strconv.Itoa(i), images[i])
				switch {
				case err != nil:
					t.Error(err)
				case status == http.StatusCreated:
					accepted.Add(1)
				case status == http.StatusForbidden && strings.Contains(body, `"code":"DENIED"`) && strings.Contains(body, "spec.quota.bytes"):
					denied.Add(1)
				default:
					t.Errorf("push %d: %d %s", i, status, body)
				}
			}
		})
	}
	wg.Wait()
	fit := int64(quota) / perImage
	t.Logf("%d pushes of %d bytes each against %d bytes from 3 replicas: %d accepted, %d refused", pushers*each, perImage, quota, accepted.Load(), denied.Load())
	if accepted.Load() != fit || denied.Load() != int64(pushers*each)-fit {
		t.Fatalf("%d accepted, %d refused; want %d and %d", accepted.Load(), denied.Load(), fit, int64(pushers*each)-fit)
	}

	var r v1.Repository
	if err := env.Client.Get(ctx, key, &r); err != nil {
		t.Fatal(err)
	}
	// What the quota was checked against: status, or once the tags are
	// split, status.usage (status.bytes is then the operator's sum).
	bytes, tags := r.Status.Bytes, int64(r.Status.TagCount)
	var shards v1.TagShardList
	if r.Status.TagsSplit != (fit > v1.MaxTagsPerObject) {
		t.Fatalf("tagsSplit %v with %d tags", r.Status.TagsSplit, fit)
	}
	if r.Status.TagsSplit {
		u := r.Status.Usage
		if u == nil || len(u.Pending) != 0 {
			t.Fatalf("status.usage %+v: want it counted, nothing in flight", u)
		}
		bytes, tags = u.Bytes, u.Tags
		if err := env.Client.List(ctx, &shards, client.InNamespace(ns), client.MatchingLabels{v1.LabelRepositoryUID: string(r.UID)}); err != nil {
			t.Fatal(err)
		}
	}
	if bytes > quota {
		t.Errorf("usage %d bytes is over the quota %d", bytes, quota)
	}
	// Counted independently: each tag's manifest as served, and the blobs
	// it names as HEAD sizes them.
	var counted int64
	seen := map[string]bool{}
	all := v1.NewTagTree(&r, shards.Items).All()
	for _, tag := range all {
		if seen[tag.Digest] {
			continue
		}
		seen[tag.Digest] = true
		status, body, err := send(ctx, "GET", base(0)+"/v2/"+repo+"/manifests/"+tag.Digest, nil)
		if err != nil || status != http.StatusOK {
			t.Fatalf("GET %s: %d %v", tag.Digest, status, err)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatal(err)
		}
		counted += int64(len(body))
		for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			resp, err := http.Head(base(1) + "/v2/" + repo + "/blobs/" + b.Digest.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			counted += resp.ContentLength
		}
	}
	if bytes != counted || tags != fit || len(all) != int(fit) {
		t.Errorf("usage %d bytes for %d tags (%d found); counted from the registry %d bytes, want %d tags", bytes, tags, len(all), counted, fit)
	}

	// The refusals show in `kubectl describe repository`: a Warning Event.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var events eventsv1.EventList
		if err := env.Client.List(ctx, &events, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		found := slices.ContainsFunc(events.Items, func(ev eventsv1.Event) bool {
			return ev.Reason == "QuotaExceeded" && ev.Type == corev1.EventTypeWarning && ev.Regarding.Name == key.Name && strings.Contains(ev.Note, "spec.quota.bytes")
		})
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QuotaExceeded Warning on Repository %s among %d Events", key.Name, len(events.Items))
		}
	}

	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	noise := make([]byte, 2*layerBytes) // incompressible: more than the room left
	_, _ = rand.Read(noise)
	writeLayerTar(t, layer, map[string]string{"noise.bin": string(noise)})
	out, err := try(home, "", testutil.Client(t, "crane"), "append", "--insecure", "-f", layer, "-t", replicas[2].host+"/"+repo+":one-more")
	want := fmt.Sprintf("quota of 1Mi (%d bytes; Repository %s spec.quota.bytes)", quota, key.Name)
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("crane append past the quota: err %v; want the message %q in:\n%s", err, want, out)
	}
}

// TestRegistryQuotaWithCrane: a Registry's spec.quota.bytes bounds all its
// repositories together. Three registryd processes, 8 crane processes
// each pushing an image of 64 KiB into a repository of its own, against
// 256 KiB: exactly as many as fit are accepted, crane prints the refusal
// of the others, and status.usage, settled, equals what the Repositories
// hold. (No operator runs here: the test makes the first count of usage,
// as the operator would.)
func TestRegistryQuotaWithCrane(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	ctx := t.Context()
	const ns, regName, quota, layerBytes, pushers = "registry-quota", "reg", 256 << 10, 64 << 10, 8
	kubeRegistry(t, ns, regName, v1.RegistrySpec{Quota: &v1.RegistryQuota{Bytes: resource.NewQuantity(quota, resource.BinarySI)}})
	key := client.ObjectKey{Namespace: ns, Name: regName}
	var reg v1.Registry
	if err := env.Client.Get(ctx, key, &reg); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	reg.Status.Usage = &v1.QuotaUsage{CountedAt: &now}
	if err := env.Client.Status().Update(ctx, &reg); err != nil {
		t.Fatal(err)
	}
	replicas := kubeReplicas(t, ns, regName, 3)

	crane := testutil.Client(t, "crane")
	var accepted, denied atomic.Int64
	var wg sync.WaitGroup
	for i := range pushers {
		wg.Go(func() {
			home := t.TempDir()
			layer := filepath.Join(home, "layer.tar")
			noise := make([]byte, layerBytes)
			_, _ = rand.Read(noise)
			writeLayerTar(t, layer, map[string]string{"noise.bin": string(noise)})
			out, err := try(home, "", crane, "append", "--insecure", "-f", layer, "-t", fmt.Sprintf("%s/team/app%d:v1", replicas[i%3].host, i))
			switch {
			case err == nil:
				accepted.Add(1)
			case strings.Contains(out, "Registry reg has no room") && strings.Contains(out, "spec.quota.bytes"):
				denied.Add(1)
			default:
				t.Errorf("crane append %d: %v\n%s", i, err, out)
			}
		})
	}
	wg.Wait()

	var repos v1.RepositoryList
	if err := env.Client.List(ctx, &repos, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var held, perImage int64
	for _, r := range repos.Items {
		held += r.Status.Bytes
		perImage = max(perImage, r.Status.Bytes)
	}
	if err := env.Client.Get(ctx, key, &reg); err != nil {
		t.Fatal(err)
	}
	u := reg.Status.Usage
	t.Logf("%d crane pushes of about %d bytes into a Registry with room for %d: %d accepted, %d refused; usage %d bytes (%d pending), the Repositories hold %d",
		pushers, perImage, quota, accepted.Load(), denied.Load(), u.Bytes, len(u.Pending), held)
	if fit := quota / perImage; perImage == 0 || accepted.Load() != fit || denied.Load() != pushers-fit {
		t.Fatalf("%d accepted, %d refused; want %d and %d", accepted.Load(), denied.Load(), quota/max(perImage, 1), pushers-quota/max(perImage, 1))
	}
	if u.Bytes != held || held > quota || len(u.Pending) != 0 {
		t.Fatalf("usage %+v; the Repositories hold %d bytes against a quota of %d", u, held, quota)
	}
}
