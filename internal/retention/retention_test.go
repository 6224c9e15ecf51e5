package retention_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stevedore-dev/stevedore/internal/retention"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return now.Add(-d) }

const day = 24 * time.Hour

func tag(name, digest string, age time.Duration) retention.Tag {
	return retention.Tag{Name: name, Digest: digest, PushedAt: ago(age)}
}

// TestDecide: each rule kind, the OR between rules, protections and the
// shared-digest rule, one at a time.
func TestDecide(t *testing.T) {
	base := []retention.Tag{
		tag("v1.0.0", "d1", 300*day),
		tag("v1.1.0", "d2", 200*day),
		tag("v2.0.0-rc1", "d3", 100*day),
		tag("v2.0.0", "d4", 90*day),
		tag("1.5.0", "d5", 150*day),
		tag("ci-1", "d6", 30*day),
		tag("ci-2", "d7", 10*day),
		tag("ci-3", "d8", 1*day),
		tag("latest", "d8", 1*day),
		tag("feature-x", "d9", 400*day),
	}
	tests := []struct {
		name   string
		policy retention.Policy
		prot   retention.Protection
		want   []string // deleted
	}{
		{"no rules delete nothing", retention.Policy{}, retention.Protection{}, nil},
		{"a rule without conditions keeps what it selects", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}}}}, retention.Protection{}, nil},
		{"pushed within", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, PushedWithin: 14 * day}}}, retention.Protection{},
			[]string{"ci-1"}},
		{"most recent", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, MostRecent: 1}}}, retention.Protection{},
			[]string{"ci-1", "ci-2"}},
		{"highest semver, with and without v, pre-release below release", retention.Policy{Rules: []retention.Rule{{Tags: []string{"v?[0-9].*"}, HighestSemver: 1}}}, retention.Protection{},
			[]string{"1.5.0", "v1.0.0", "v1.1.0", "v2.0.0-rc1"}},
		{"highest semver reads versions without v", retention.Policy{Rules: []retention.Rule{{Tags: []string{"v?[0-9].*"}, HighestSemver: 3}}}, retention.Protection{},
			[]string{"v1.0.0", "v1.1.0"}},
		{"patterns are anchored", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci"}, MostRecent: 1}}}, retention.Protection{}, nil},
		{"rules are OR'ed", retention.Policy{Rules: []retention.Rule{
			{Tags: []string{"ci-.*"}, MostRecent: 1},
			{Tags: []string{"ci-.*"}, PushedWithin: 14 * day},
		}}, retention.Protection{}, []string{"ci-1"}},
		{"conditions of one rule are OR'ed", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, MostRecent: 1, PushedWithin: 20 * day}}},
			retention.Protection{}, []string{"ci-1"}},
		{"a rule with no tags selects all", retention.Policy{Rules: []retention.Rule{{MostRecent: 3}}}, retention.Protection{},
			// ci-3, latest (1 day) and ci-2 are the three most recent.
			[]string{"1.5.0", "ci-1", "feature-x", "v1.0.0", "v1.1.0", "v2.0.0", "v2.0.0-rc1"}},
		{"a kept digest keeps its other tags", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, MostRecent: 0, PushedWithin: time.Nanosecond}}},
			retention.Protection{}, []string{"ci-1", "ci-2"}}, // ci-3 shares d8 with latest, which no rule selects
		{"immutable tags are kept", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, PushedWithin: time.Nanosecond}}},
			retention.Protection{Immutable: func(t string) bool { return t == "ci-1" }}, []string{"ci-2"}},
		{"a tag in use is kept", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, PushedWithin: time.Nanosecond}}},
			retention.Protection{Tags: map[string]bool{"ci-2": true}}, []string{"ci-1"}},
		{"a digest in use keeps its tags", retention.Policy{Rules: []retention.Rule{{Tags: []string{"ci-.*"}, PushedWithin: time.Nanosecond}}},
			retention.Protection{Digests: map[string]bool{"d6": true}}, []string{"ci-2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := retention.Decide(base, tc.policy, tc.prot, now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(plan.Delete, tc.want) {
				t.Fatalf("delete %v, want %v (kept: %v)", plan.Delete, tc.want, plan.Kept)
			}
			if len(plan.Delete)+len(plan.Kept) != len(base) {
				t.Errorf("%d deleted + %d kept != %d tags", len(plan.Delete), len(plan.Kept), len(base))
			}
		})
	}
	if _, err := retention.Decide(base, retention.Policy{Rules: []retention.Rule{{Tags: []string{"("}}}}, retention.Protection{}, now); err == nil {
		t.Error("an invalid pattern must stop the run")
	}
}

// TestDecide5000 applies a policy of patterns, most recent N, highest
// semver and pushed-within to 5,000 tags and checks the deleted set
// against one computed here independently, by category, without the
// package's code paths (integer version keys, no semver library).
func TestDecide5000(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var all []retention.Tag
	type release struct{ major, minor, patch int }
	releases := map[string]release{}
	for i := range 600 {
		r := release{i / 100, (i / 10) % 10, i % 10}
		name := fmt.Sprintf("v%d.%d.%d", r.major, r.minor, r.patch)
		releases[name] = r
		all = append(all, tag(name, fmt.Sprintf("rel-%d", i), time.Duration(rng.IntN(700))*day))
	}
	for i := range 3000 {
		all = append(all, tag(fmt.Sprintf("ci-%d", i), fmt.Sprintf("ci-%d", i), time.Duration(rng.Int64N(int64(60*day)))))
	}
	for i := range 1000 {
		all = append(all, tag(fmt.Sprintf("pr-%d", i), fmt.Sprintf("pr-%d", i), time.Duration(rng.Int64N(int64(90*day)))))
	}
	for i := range 398 {
		all = append(all, tag(fmt.Sprintf("feature-%d", i), fmt.Sprintf("feature-%d", i), time.Duration(rng.IntN(100))*day))
	}
	// latest points at an old CI build's digest; the Deployment uses pr-7's.
	all = append(all, tag("latest", "ci-5", time.Hour), tag("stable", "rel-3", time.Hour))
	if len(all) != 5000 {
		t.Fatalf("%d tags", len(all))
	}
	policy := retention.Policy{Rules: []retention.Rule{
		{Tags: []string{`v[0-9]+[.][0-9]+[.][0-9]+`}, HighestSemver: 25},
		{Tags: []string{"ci-.*"}, PushedWithin: 14 * day},
		{Tags: []string{"pr-.*"}, MostRecent: 40},
		{Tags: []string{"latest", "stable"}},
	}}
	prot := retention.Protection{Digests: map[string]bool{"pr-7": true}, Tags: map[string]bool{"v0.0.1": true}}
	plan, err := retention.Decide(all, policy, prot, now)
	if err != nil {
		t.Fatal(err)
	}

	// Independently: what each category keeps.
	keep := map[string]bool{}
	var rel []string
	for name := range releases {
		rel = append(rel, name)
	}
	slices.SortFunc(rel, func(a, b string) int {
		ra, rb := releases[a], releases[b]
		return (rb.major*10000 + rb.minor*100 + rb.patch) - (ra.major*10000 + ra.minor*100 + ra.patch)
	})
	for _, name := range rel[:25] {
		keep[name] = true
	}
	var prs []retention.Tag
	for _, tg := range all {
		switch {
		case len(tg.Name) > 3 && tg.Name[:3] == "ci-" && now.Sub(tg.PushedAt) < 14*day:
			keep[tg.Name] = true
		case len(tg.Name) > 3 && tg.Name[:3] == "pr-":
			prs = append(prs, tg)
		case tg.Name == "latest" || tg.Name == "stable" || len(tg.Name) > 8 && tg.Name[:8] == "feature-":
			keep[tg.Name] = true
		}
	}
	slices.SortFunc(prs, func(a, b retention.Tag) int { return b.PushedAt.Compare(a.PushedAt) })
	for _, tg := range prs[:40] {
		keep[tg.Name] = true
	}
	keep["pr-7"], keep["v0.0.1"] = true, true // in use
	keep["ci-5"], keep["v0.0.3"] = true, true // latest and stable share their digests
	var want []string
	for _, tg := range all {
		if !keep[tg.Name] {
			want = append(want, tg.Name)
		}
	}
	slices.Sort(want)
	if !slices.Equal(plan.Delete, want) {
		t.Fatalf("deleted %d tags, expected %d; first differences: %v", len(plan.Delete), len(want), testutil.FirstDifferences(plan.Delete, want))
	}
	t.Logf("5000 tags: %d deleted, %d kept", len(plan.Delete), len(plan.Kept))
}

// TestDecidePulled: pulledWithin and mostRecentlyPulled keep by recorded
// pull times; a tag never pulled is kept by neither.
func TestDecidePulled(t *testing.T) {
	pulled := func(name string, pushed, pulled time.Duration) retention.Tag {
		tg := tag(name, name, pushed)
		if pulled >= 0 {
			tg.PulledAt = ago(pulled)
		}
		return tg
	}
	const never = -1
	tags := []retention.Tag{
		pulled("a", 100*day, 1*day),
		pulled("b", 100*day, 20*day),
		pulled("c", 1*day, never), // pushed yesterday, never pulled
		pulled("d", 100*day, 3*day),
		pulled("e", 100*day, never),
	}
	tests := []struct {
		name string
		rule retention.Rule
		want []string // deleted
	}{
		{"pulled within", retention.Rule{PulledWithin: 7 * day}, []string{"b", "c", "e"}},
		{"most recently pulled", retention.Rule{MostRecentlyPulled: 2}, []string{"b", "c", "e"}},
		{"most recently pulled, more than were pulled", retention.Rule{MostRecentlyPulled: 10}, []string{"c", "e"}},
		{"or'ed with pushed within", retention.Rule{PulledWithin: 7 * day, PushedWithin: 7 * day}, []string{"b", "e"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := retention.Decide(tags, retention.Policy{Rules: []retention.Rule{tc.rule}}, retention.Protection{}, now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(plan.Delete, tc.want) {
				t.Fatalf("delete %v, want %v (kept: %v)", plan.Delete, tc.want, plan.Kept)
			}
		})
	}
}
