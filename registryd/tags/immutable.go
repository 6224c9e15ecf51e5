package tags

import (
	"fmt"
	"regexp"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// ImmutableRule is one spec.immutableTags pattern and where it was declared.
type ImmutableRule struct {
	// Pattern as the user wrote it; it must match the whole tag.
	Pattern string
	// Source names where it was declared, e.g. "Repository team-app",
	// "Registry main", "flag --immutable-tags".
	Source string
	re     *regexp.Regexp // nil: the pattern does not compile
}

// Matches reports whether the rule covers tag. A pattern that does not
// compile (the API server refuses them; an object stored before that check
// could hold one) covers every tag: an invalid rule fails closed.
func (r ImmutableRule) Matches(tag string) bool {
	return r.re == nil || r.re.MatchString(tag)
}

func (r ImmutableRule) String() string {
	if r.re == nil {
		return fmt.Sprintf("rule %q of %s, which is not a valid regular expression and so covers every tag until it is fixed", r.Pattern, r.Source)
	}
	return fmt.Sprintf("rule %q of %s", r.Pattern, r.Source)
}

// ImmutableRules is a set of rules; a tag is immutable when any matches.
type ImmutableRules []ImmutableRule

// Match returns the first rule that covers tag.
func (rs ImmutableRules) Match(tag string) (ImmutableRule, bool) {
	for _, r := range rs {
		if r.Matches(tag) {
			return r, true
		}
	}
	return ImmutableRule{}, false
}

// Patterns compiles immutable-tag patterns, anchored at both ends, and
// remembers them: rules are compiled once per pattern, not per tag write.
// Safe for concurrent use; the zero value is ready.
type Patterns struct {
	mu       sync.Mutex
	compiled map[string]*regexp.Regexp
}

// Rules returns the rules of patterns declared by source.
func (p *Patterns) Rules(source string, patterns []string) ImmutableRules {
	if len(patterns) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.compiled == nil {
		p.compiled = map[string]*regexp.Regexp{}
	}
	out := make(ImmutableRules, 0, len(patterns))
	for _, pat := range patterns {
		re, ok := p.compiled[pat]
		if !ok {
			re, _ = CompileImmutable(pat)
			if len(p.compiled) > 4096 {
				clear(p.compiled) // patterns come from objects users edit: bound the memory
			}
			p.compiled[pat] = re
		}
		out = append(out, ImmutableRule{Pattern: pat, Source: source, re: re})
	}
	return out
}

// CompileImmutable compiles an immutable-tag pattern so that it must match
// the whole tag: "v1" matches v1 only, "v1.*" every tag starting with v1.
func CompileImmutable(pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + pattern + `)$`)
	if err != nil {
		return nil, fmt.Errorf("immutable tag pattern %q: %w", pattern, err)
	}
	return re, nil
}

// MustRules compiles patterns declared by source, refusing an invalid one
// (for flags, checked once at start-up).
func MustRules(source string, patterns []string) (ImmutableRules, error) {
	out := make(ImmutableRules, 0, len(patterns))
	for _, pat := range patterns {
		re, err := CompileImmutable(pat)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		out = append(out, ImmutableRule{Pattern: pat, Source: source, re: re})
	}
	return out, nil
}

// ErrImmutable is the DENIED refusal of a write that would move or remove
// an immutable tag. It names the tag, the rule and where the rule is
// declared, so the user who reads it in their client's output knows what
// to change.
func ErrImmutable(tag string, rule ImmutableRule, current digest.Digest, action string) error {
	return errcode.Denied.With(fmt.Sprintf("tag %q is immutable (%s): it points at %s and cannot be %s; push a new tag instead",
		tag, rule, current, action))
}

// Actions refused on an immutable tag, as ErrImmutable words them.
const (
	ActionOverwritten = "overwritten"
	ActionDeleted     = "deleted"
	ActionUntagged    = "removed by deleting its manifest"
)
