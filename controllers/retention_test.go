package controllers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

func fakeDigest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestRetention5000: a rule set of patterns, highest semver, most recent
// N and pushed-within is applied to a repository with 5,000 tags, first
// as a dry run, then for real. The dry run deletes nothing and lists
// exactly what the real run then deletes; that set equals one computed
// here independently; a digest and a tag used only by a Deployment scaled
// to zero (in another namespace) survive; so do an immutable tag and the
// tags sharing a digest with a kept one.
func TestRetention5000(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 6000 })
	repo := createRepository(t, ns, "app", "main", "team/app", v1.DeletionRetain)
	now := time.Now()
	var all []v1.TagStatus
	add := func(name, digestOf string, age time.Duration) {
		all = append(all, v1.TagStatus{Name: name, Digest: fakeDigest(digestOf), PushedAt: metav1.NewTime(now.Add(-age))})
	}
	type version struct{ major, minor, patch int }
	releases := map[string]version{}
	for i := range 200 {
		v := version{i / 100, (i / 10) % 10, i % 10}
		name := fmt.Sprintf("v%d.%d.%d", v.major, v.minor, v.patch)
		releases[name] = v
		add(name, name, time.Duration(200-i)*24*time.Hour)
	}
	for i := range 3000 {
		age := time.Duration(i) * 4 * time.Minute // 0..8.3 days
		if i >= 2400 {
			age = time.Duration(20+i%40) * 24 * time.Hour
		}
		add(fmt.Sprintf("ci-%d", i), fmt.Sprintf("ci-%d", i), age)
	}
	for i := range 1000 {
		add(fmt.Sprintf("pr-%d", i), fmt.Sprintf("pr-%d", i), time.Duration(1000-i)*time.Hour)
	}
	for i := range 798 {
		add(fmt.Sprintf("feature-%d", i), fmt.Sprintf("feature-%d", i), 300*24*time.Hour)
	}
	add("latest", "ci-2999", time.Hour) // shares an old CI build's digest
	add("stable", "v0.0.5", time.Hour)  // shares an old release's digest
	slices.SortFunc(all, func(a, b v1.TagStatus) int { return compareStrings(a.Name, b.Name) })
	if len(all) != 5000 {
		t.Fatalf("%d tags", len(all))
	}
	// Laid out as registryd keeps 5,000 tags: in TagShards of at most
	// MaxTagsPerObject, so retention runs across shards.
	var cur v1.Repository
	if err := get(&cur, ns, "app"); err != nil {
		t.Fatal(err)
	}
	shards, rootTags, split := v1.LayOutTags(&cur, all, v1.MaxTagsPerObject)
	for _, sh := range shards {
		if err := env.Client.Create(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		cur.Status.Tags, cur.Status.TagsSplit, cur.Status.TagCount = rootTags, split, int32(len(all))
		return env.Client.Status().Update(ctx, &cur)
	})
	if err != nil {
		t.Fatalf("writing 5000 tags: %v", err)
	}

	// Used only by a Deployment scaled to zero, in another namespace: an
	// old CI build by digest and an old PR build by tag.
	other := newNamespace(t)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "idle", Namespace: other},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](0),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "idle"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "idle"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{
					{Name: "a", Image: "main-registry.team.svc:5000/team/app@" + fakeDigest("ci-2998")},
					{Name: "b", Image: "main-registry.team.svc:5000/team/app:pr-0"},
				}},
			},
		},
	}
	if err := env.Client.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	// The Deployment's previous revision, an old ReplicaSet scaled to
	// zero: `kubectl rollout undo` runs its image again.
	old := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "idle-1", Namespace: other},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](0),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "idle", "rev": "1"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "idle", "rev": "1"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{
					{Name: "a", Image: "main-registry.team.svc:5000/team/app@" + fakeDigest("ci-2997")},
				}},
			},
		},
	}
	if err := env.Client.Create(ctx, old); err != nil {
		t.Fatal(err)
	}

	policy := &v1.RetentionSpec{DryRun: true, Rules: []v1.RetentionRule{
		{Tags: []string{`v[0-9]+[.][0-9]+[.][0-9]+`}, HighestSemver: ptr.To[int32](20)},
		{Tags: []string{"ci-.*"}, PushedWithin: &metav1.Duration{Duration: 14 * 24 * time.Hour}},
		{Tags: []string{"pr-.*"}, MostRecent: ptr.To[int32](900)},
		{Tags: []string{"latest", "stable"}},
	}}
	setRetention(t, ns, "app", policy, []string{"v0[.]0[.]1"})

	// Independently: by category.
	keep := map[string]bool{}
	var rel []string
	for name := range releases {
		rel = append(rel, name)
	}
	slices.SortFunc(rel, func(a, b string) int {
		va, vb := releases[a], releases[b]
		return (vb.major*10000 + vb.minor*100 + vb.patch) - (va.major*10000 + va.minor*100 + va.patch)
	})
	for _, name := range rel[:20] {
		keep[name] = true
	}
	for i := range 3000 {
		if i < 2400 {
			keep[fmt.Sprintf("ci-%d", i)] = true
		}
	}
	for i := 100; i < 1000; i++ {
		keep[fmt.Sprintf("pr-%d", i)] = true // the 900 most recent
	}
	for _, tg := range all {
		if len(tg.Name) > 8 && tg.Name[:8] == "feature-" || tg.Name == "latest" || tg.Name == "stable" {
			keep[tg.Name] = true
		}
	}
	keep["ci-2999"], keep["v0.0.5"] = true, true // digests of latest and stable
	keep["ci-2998"], keep["pr-0"] = true, true   // the idle Deployment's
	keep["ci-2997"] = true                       // its previous ReplicaSet's
	keep["v0.0.1"] = true                        // immutable
	var want []string
	for _, tg := range all {
		if !keep[tg.Name] {
			want = append(want, tg.Name)
		}
	}
	slices.Sort(want)

	var dry *v1.RetentionStatus
	eventually(t, "dry run", func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		if r := cur.Status.Retention; r == nil || !r.DryRun || r.ObservedGeneration != cur.Generation {
			return fmt.Errorf("status.retention = %+v", r)
		}
		if n := len(tagTree(t, &cur).All()); n != 5000 {
			t.Fatalf("the dry run deleted tags: %d left", n)
		}
		dry = cur.Status.Retention
		return nil
	})
	if dry.Error != "" || !slices.Equal(dry.Tags, want[:min(len(want), 250)]) || int(dry.Count) != len(want) {
		t.Fatalf("dry run lists %d tags (%s), want %d: first differences %v", dry.Count, dry.Error, len(want), testutil.FirstDifferences(dry.Tags, want))
	}

	policy.DryRun = false
	setRetention(t, ns, "app", policy, []string{"v0[.]0[.]1"})
	var left []v1.TagStatus
	var real *v1.RetentionStatus
	eventually(t, "real run", func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		if r := cur.Status.Retention; r == nil || r.DryRun || r.ObservedGeneration != cur.Generation {
			return fmt.Errorf("status.retention = %+v", r)
		}
		left, real = tagTree(t, &cur).All(), cur.Status.Retention
		return nil
	})
	var deleted []string
	for _, tg := range all {
		if !slices.ContainsFunc(left, func(l v1.TagStatus) bool { return l.Name == tg.Name }) {
			deleted = append(deleted, tg.Name)
		}
	}
	if !slices.Equal(deleted, want) || !slices.Equal(real.Tags, dry.Tags) {
		t.Fatalf("the real run deleted %d tags (status lists %d), the dry run listed %d: first differences %v", len(deleted), len(real.Tags), len(dry.Tags), testutil.FirstDifferences(deleted, dry.Tags))
	}
	for _, name := range []string{"ci-2998", "ci-2997", "pr-0", "v0.0.1", "latest", "ci-2999"} {
		if !slices.ContainsFunc(left, func(l v1.TagStatus) bool { return l.Name == name }) {
			t.Errorf("%s was deleted", name)
		}
	}
	eventually(t, "tagCount summed over the shards", func() error {
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		if int(cur.Status.TagCount) != len(left) {
			return fmt.Errorf("tagCount %d, want %d", cur.Status.TagCount, len(left))
		}
		return nil
	})
	t.Logf("5000 tags in %d objects: %d deleted, exactly the dry run's count and the expected set", len(shards)+1, len(deleted))
	_ = repo
}

// TestRetentionRegistryGlob: a Registry's retention applies to the
// repositories its glob matches, unless a Repository has its own.
func TestRetentionRegistryGlob(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Retention = []v1.RegistryRetention{
			{Repositories: "ci/**", RetentionSpec: v1.RetentionSpec{Rules: []v1.RetentionRule{{MostRecent: ptr.To[int32](1)}}}},
			{Repositories: "**", RetentionSpec: v1.RetentionSpec{Rules: []v1.RetentionRule{{MostRecent: ptr.To[int32](2)}}}},
		}
	})
	tests := []struct {
		obj, path string
		own       *v1.RetentionSpec
		wantLeft  int
		policy    string
	}{
		{"deep", "ci/team/app", nil, 1, "Registry main repositories ci/**"},
		{"other", "team/app", nil, 2, "Registry main repositories **"},
		{"own", "ci/own", &v1.RetentionSpec{Rules: []v1.RetentionRule{{MostRecent: ptr.To[int32](3)}}}, 3, "Repository"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			createRepository(t, ns, tc.obj, "main", tc.path, v1.DeletionRetain)
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				var cur v1.Repository
				if err := get(&cur, ns, tc.obj); err != nil {
					return err
				}
				for i := range 5 {
					cur.Status.SetTag(v1.TagStatus{Name: fmt.Sprintf("t%d", i), Digest: fakeDigest(fmt.Sprint(i)), PushedAt: metav1.NewTime(time.Now().Add(-time.Duration(i) * time.Hour))})
				}
				return env.Client.Status().Update(ctx, &cur)
			})
			if err != nil {
				t.Fatal(err)
			}
			if tc.own != nil {
				setRetention(t, ns, tc.obj, tc.own, nil)
			} else {
				// Retention ran on creation, before the tags: a Registry
				// spec change runs it again.
				bumpRegistry(t, ns, "main")
			}
			eventually(t, "retention", func() error {
				var cur v1.Repository
				if err := get(&cur, ns, tc.obj); err != nil {
					return err
				}
				if r := cur.Status.Retention; r == nil || r.Policy != tc.policy || len(cur.Status.Tags) != tc.wantLeft {
					return fmt.Errorf("%d tags left, status.retention %+v", len(cur.Status.Tags), r)
				}
				return nil
			})
		})
	}
}

// TestRetentionPulled: pulledWithin and mostRecentlyPulled read the pull
// times registryd records in status; a tag never pulled is kept by
// neither.
func TestRetentionPulled(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	createRegistry(t, ns, "main", nil)
	createRepository(t, ns, "app", "main", "team/app", v1.DeletionRetain)
	now := time.Now()
	pulled := map[string]time.Duration{"recent": time.Hour, "week": 8 * 24 * time.Hour, "month": 40 * 24 * time.Hour}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		for _, name := range []string{"recent", "week", "month", "never"} {
			tag := v1.TagStatus{Name: name, Digest: fakeDigest(name), PushedAt: metav1.NewTime(now.Add(-100 * 24 * time.Hour)), ContentSize: int64(len(name))}
			if ago, ok := pulled[name]; ok {
				tag.PulledAt = ptr.To(metav1.NewTime(now.Add(-ago)))
			}
			cur.Status.SetTag(tag)
		}
		cur.Status.Recount()
		return env.Client.Status().Update(ctx, &cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	// "recent" by pulledWithin, "week" as the most recently pulled after it.
	setRetention(t, ns, "app", &v1.RetentionSpec{Rules: []v1.RetentionRule{
		{PulledWithin: &metav1.Duration{Duration: 7 * 24 * time.Hour}},
		{MostRecentlyPulled: ptr.To[int32](2)},
	}}, nil)
	eventually(t, "retention", func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		r := cur.Status.Retention
		if r == nil || r.ObservedGeneration != cur.Generation {
			return fmt.Errorf("status.retention %+v", r)
		}
		var left []string
		for _, tg := range cur.Status.Tags {
			left = append(left, tg.Name)
		}
		if !slices.Equal(left, []string{"recent", "week"}) || !slices.Equal(r.Tags, []string{"month", "never"}) {
			t.Fatalf("left %v, deleted %v; want [recent week] left, [month never] deleted", left, r.Tags)
		}
		if want := int64(len("recent") + len("week")); cur.Status.Bytes != want {
			t.Errorf("status.bytes %d after retention, want %d", cur.Status.Bytes, want)
		}
		return nil
	})
}

// persistent retries conflicts as registryd's group commit does: until
// it gets through, not four times.
func persistent() wait.Backoff {
	return wait.Backoff{Steps: 200, Duration: 5 * time.Millisecond, Factor: 1.5, Jitter: 0.5, Cap: 100 * time.Millisecond}
}

func bumpRegistry(t *testing.T, ns, name string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var reg v1.Registry
		if err := get(&reg, ns, name); err != nil {
			return err
		}
		reg.Spec.Limits.MaxTagsPerRepository++
		return env.Client.Update(context.Background(), &reg)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func setRetention(t *testing.T, ns, name string, policy *v1.RetentionSpec, immutable []string) {
	t.Helper()
	err := retry.RetryOnConflict(persistent(), func() error {
		var cur v1.Repository
		if err := get(&cur, ns, name); err != nil {
			return err
		}
		cur.Spec.Retention, cur.Spec.ImmutableTags = policy.DeepCopy(), immutable
		return env.Client.Update(context.Background(), &cur)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestRetentionRacesPushes: tags pushed while retention runs (as registryd
// does: read, add, update with the resourceVersion, retry on conflict)
// are never lost to retention's own status update, and retention still
// deletes every tag it should.
func TestRetentionRacesPushes(t *testing.T) {
	// Mostly waits on retention passes; its own namespace and Registry.
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	createRegistry(t, ns, "main", func(r *v1.Registry) { r.Spec.Limits.MaxTagsPerRepository = 1000 })
	createRepository(t, ns, "app", "main", "app", v1.DeletionRetain)
	old := time.Now().Add(-30 * 24 * time.Hour)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		for i := range 300 {
			cur.Status.SetTag(v1.TagStatus{Name: fmt.Sprintf("old-%d", i), Digest: fakeDigest(fmt.Sprintf("old-%d", i)), PushedAt: metav1.NewTime(old)})
		}
		return env.Client.Status().Update(ctx, &cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	const pushes = 100
	var pushed []string // acknowledged pushes; read after done
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range pushes {
			name := fmt.Sprintf("new-%d", i)
			err := retry.RetryOnConflict(persistent(), func() error {
				var cur v1.Repository
				if err := get(&cur, ns, "app"); err != nil {
					return err
				}
				cur.Status.SetTag(v1.TagStatus{Name: name, Digest: fakeDigest(name), PushedAt: metav1.Now()})
				// And one for retention to delete, so every run deletes
				// something and writes the tag list.
				old := fmt.Sprintf("old-x%d", i)
				cur.Status.SetTag(v1.TagStatus{Name: old, Digest: fakeDigest(old), PushedAt: metav1.NewTime(time.Now().Add(-30 * 24 * time.Hour))})
				return env.Client.Status().Update(ctx, &cur)
			})
			if err == nil {
				pushed = append(pushed, name) // a client told 201 (registryd answers 503 otherwise)
			}
		}
	}()
	defer func() { <-done }() // no push outlives the test
	// Retention runs again on every spec change: several runs race the pushes.
	for k := 0; ; k++ {
		select {
		case <-done:
		default:
			// One attempt: a conflict with a push only skips this run.
			var cur v1.Repository
			if err := get(&cur, ns, "app"); err != nil {
				t.Fatal(err)
			}
			cur.Spec.Retention = &v1.RetentionSpec{Rules: []v1.RetentionRule{
				{Tags: []string{"old-.*", "new-.*"}, PushedWithin: &metav1.Duration{Duration: time.Duration(24*60+k) * time.Minute}},
			}}
			if err := env.Client.Update(ctx, &cur); err != nil && !apierrors.IsConflict(err) {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		t.Logf("%d retention spec changes while %d tags were pushed", k, pushes)
		break
	}
	<-done
	eventually(t, "retention after the pushes", func() error {
		var cur v1.Repository
		if err := get(&cur, ns, "app"); err != nil {
			return err
		}
		olds := 0
		for _, tg := range cur.Status.Tags {
			if tg.Name[:4] == "old-" {
				olds++
			}
		}
		if r := cur.Status.Retention; r == nil || r.ObservedGeneration != cur.Generation || olds != 0 {
			return fmt.Errorf("%d old tags left, status.retention %+v", olds, r)
		}
		var lost []string
		for _, name := range pushed {
			if _, ok := cur.Status.FindTag(name); !ok {
				lost = append(lost, name)
			}
		}
		if len(pushed) < pushes/2 || len(lost) > 0 {
			t.Fatalf("%d tags acknowledged during retention runs, %d of them lost: %v", len(pushed), len(lost), lost)
		}
		t.Logf("%d of %d pushes acknowledged while retention ran, none lost", len(pushed), pushes)
		return nil
	})
}
