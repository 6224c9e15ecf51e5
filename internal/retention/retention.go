// Package retention decides which tags of a repository a retention policy
// deletes. It is pure: the caller brings the tags, the rules, what the
// cluster runs and the time, and gets back the tags to delete, so a dry run
// and a real run given the same input delete exactly the same set.
//
// A policy is a list of rules. Each rule selects tags (by anchored regular
// expressions; none: every tag) and keeps those of them that meet any of
// its conditions (pushed within D, the N most recently pushed, the N
// highest semantic versions, pulled within D, the N most recently pulled;
// no condition: all of them). Rules are OR'ed:
//
//   - a tag that some rule keeps is kept;
//   - a tag that no rule selects is kept (a policy only governs what it names);
//   - a tag that rules select but none keeps is deleted, unless it is
//     protected: immutable, or in use in the cluster (its tag or digest);
//   - a kept digest keeps all of its tags.
package retention

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/semver"
)

// Tag is what retention knows of one tag.
type Tag struct {
	Name     string
	Digest   string
	PushedAt time.Time
	// PulledAt is the last recorded pull; zero: none.
	PulledAt time.Time
}

// Rule selects tags and keeps some of them.
type Rule struct {
	// Tags are regular expressions (RE2) a tag must match whole to be
	// selected; empty: every tag.
	Tags []string
	// PushedWithin keeps selected tags pushed less than this long ago (0: no such condition).
	PushedWithin time.Duration
	// MostRecent keeps the N most recently pushed selected tags (0: none).
	MostRecent int
	// HighestSemver keeps the N selected tags with the highest semantic
	// versions ("1.2.3" or "v1.2.3", pre-releases below their release);
	// tags that are no semantic version are not kept by it (0: none).
	HighestSemver int
	// PulledWithin keeps selected tags pulled less than this long ago;
	// a tag never pulled is not kept by it (0: no such condition).
	PulledWithin time.Duration
	// MostRecentlyPulled keeps the N most recently pulled selected tags;
	// tags never pulled are not kept by it (0: none).
	MostRecentlyPulled int
}

// conditional reports whether the rule has any condition (one without
// keeps every tag it selects).
func (r Rule) conditional() bool {
	return r.PushedWithin != 0 || r.MostRecent != 0 || r.HighestSemver != 0 || r.PulledWithin != 0 || r.MostRecentlyPulled != 0
}

// Policy is a list of rules.
type Policy struct {
	Rules []Rule
}

// Protection is what must never be deleted whatever the rules say.
type Protection struct {
	// Immutable reports whether a tag is immutable; nil: none is.
	Immutable func(tag string) bool
	// Tags and Digests in use by workloads of the cluster.
	Tags, Digests map[string]bool
}

// Reasons a tag is kept, as Plan reports them.
const (
	KeptUnselected   = "selected by no rule"
	KeptByRule       = "kept by rule %d"
	KeptImmutable    = "immutable"
	KeptInUse        = "in use in the cluster"
	KeptDigestInUse  = "its digest is in use in the cluster"
	KeptSharedDigest = "its digest is kept by tag %s"
)

// Plan is the outcome for one repository.
type Plan struct {
	// Delete lists the tags to delete, sorted.
	Delete []string
	// Kept says why each other tag is kept.
	Kept map[string]string
}

type compiledRule struct {
	Rule
	res []*regexp.Regexp
}

func (r compiledRule) selects(tag string) bool {
	if len(r.res) == 0 {
		return true
	}
	for _, re := range r.res {
		if re.MatchString(tag) {
			return true
		}
	}
	return false
}

func compile(p Policy) ([]compiledRule, error) {
	out := make([]compiledRule, 0, len(p.Rules))
	for i, r := range p.Rules {
		c := compiledRule{Rule: r}
		for _, pat := range r.Tags {
			re, err := regexp.Compile(`^(?:` + pat + `)$`)
			if err != nil {
				return nil, fmt.Errorf("retention rule %d: tag pattern %q: %w", i, pat, err)
			}
			c.res = append(c.res, re)
		}
		out = append(out, c)
	}
	return out, nil
}

// mostRecent is the n tags of ts latest by at, ties broken by name.
func mostRecent(ts []Tag, n int, at func(Tag) time.Time) []Tag {
	sorted := slices.Clone(ts)
	slices.SortFunc(sorted, func(a, b Tag) int {
		if c := at(b).Compare(at(a)); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return sorted[:min(n, len(sorted))]
}

// Decide computes the plan for tags under p at now. An invalid pattern is
// an error: nothing is deleted on a policy that cannot be read.
func Decide(tags []Tag, p Policy, prot Protection, now time.Time) (Plan, error) {
	rules, err := compile(p)
	if err != nil {
		return Plan{}, err
	}
	kept := make(map[string]string, len(tags))
	selected := make(map[string]bool, len(tags))
	for i, r := range rules {
		var sel []Tag
		for _, t := range tags {
			if r.selects(t.Name) {
				sel = append(sel, t)
				selected[t.Name] = true
			}
		}
		reason := fmt.Sprintf(KeptByRule, i)
		keep := func(t Tag) {
			if _, ok := kept[t.Name]; !ok {
				kept[t.Name] = reason
			}
		}
		if !r.conditional() {
			for _, t := range sel {
				keep(t)
			}
			continue
		}
		for _, t := range sel {
			if r.PushedWithin > 0 && now.Sub(t.PushedAt) < r.PushedWithin {
				keep(t)
			}
			if r.PulledWithin > 0 && !t.PulledAt.IsZero() && now.Sub(t.PulledAt) < r.PulledWithin {
				keep(t)
			}
		}
		if r.MostRecent > 0 {
			for _, t := range mostRecent(sel, r.MostRecent, func(t Tag) time.Time { return t.PushedAt }) {
				keep(t)
			}
		}
		if r.MostRecentlyPulled > 0 {
			var pulled []Tag
			for _, t := range sel {
				if !t.PulledAt.IsZero() {
					pulled = append(pulled, t)
				}
			}
			for _, t := range mostRecent(pulled, r.MostRecentlyPulled, func(t Tag) time.Time { return t.PulledAt }) {
				keep(t)
			}
		}
		if r.HighestSemver > 0 {
			var versions []Tag
			for _, t := range sel {
				if semver.IsValid(canonicalVersion(t.Name)) {
					versions = append(versions, t)
				}
			}
			slices.SortFunc(versions, func(a, b Tag) int {
				if c := semver.Compare(canonicalVersion(b.Name), canonicalVersion(a.Name)); c != 0 {
					return c
				}
				return strings.Compare(a.Name, b.Name)
			})
			for _, t := range versions[:min(r.HighestSemver, len(versions))] {
				keep(t)
			}
		}
	}
	for _, t := range tags {
		_, isKept := kept[t.Name]
		switch {
		case isKept:
		case !selected[t.Name]:
			kept[t.Name] = KeptUnselected
		case prot.Immutable != nil && prot.Immutable(t.Name):
			kept[t.Name] = KeptImmutable
		case prot.Tags[t.Name]:
			kept[t.Name] = KeptInUse
		case prot.Digests[t.Digest]:
			kept[t.Name] = KeptDigestInUse
		}
	}
	// A kept digest keeps every tag pointing at it.
	keptDigest := map[string]string{}
	for _, t := range tags {
		if _, ok := kept[t.Name]; ok {
			if _, seen := keptDigest[t.Digest]; !seen {
				keptDigest[t.Digest] = t.Name
			}
		}
	}
	plan := Plan{Kept: kept}
	for _, t := range tags {
		if _, ok := kept[t.Name]; ok {
			continue
		}
		if by, ok := keptDigest[t.Digest]; ok {
			kept[t.Name] = fmt.Sprintf(KeptSharedDigest, by)
			continue
		}
		plan.Delete = append(plan.Delete, t.Name)
	}
	slices.Sort(plan.Delete)
	return plan, nil
}

// canonicalVersion is tag as x/mod/semver reads it: with a leading v.
func canonicalVersion(tag string) string {
	if strings.HasPrefix(tag, "v") {
		return tag
	}
	return "v" + tag
}
