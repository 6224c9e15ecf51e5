// Package reference validates repository names, tags and digests before
// they are used in bucket keys: nothing from a URL reaches storage unchecked.
package reference

import (
	// go-digest only accepts algorithms whose hash is linked in.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"regexp"

	"github.com/opencontainers/go-digest"
)

// MaxNameLength bounds a repository name: the spec lets registries cap it
// and 255 is what distribution and most clients assume.
const MaxNameLength = 255

var (
	// nameRE is the distribution-spec repository name grammar.
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// Errors returned by the validators; match with errors.Is.
var (
	ErrName   = errors.New("invalid repository name")
	ErrTag    = errors.New("invalid tag")
	ErrDigest = errors.New("invalid digest")
)

// ValidateName reports whether name is an acceptable repository name.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLength || !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %.300q", ErrName, name)
	}
	return nil
}

// ValidateTag reports whether tag is an acceptable tag.
func ValidateTag(tag string) error {
	if !tagRE.MatchString(tag) {
		return fmt.Errorf("%w: %.300q", ErrTag, tag)
	}
	return nil
}

// ParseDigest parses s as a sha256 or sha512 digest with a well-formed
// lowercase hex encoding; other algorithms are refused because the bucket
// layout and upload hashing only know these two.
func ParseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %.300q: %w", ErrDigest, s, err)
	}
	if alg := d.Algorithm(); alg != digest.SHA256 && alg != digest.SHA512 {
		return "", fmt.Errorf("%w: unsupported algorithm %q", ErrDigest, alg)
	}
	return d, nil
}

// Reference is the <reference> of a manifest URL: exactly one of Tag and
// Digest is set.
type Reference struct {
	Tag    string
	Digest digest.Digest
}

func (r Reference) String() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

// ParseReference parses a manifest reference: a digest when it contains ':',
// a tag otherwise.
func ParseReference(s string) (Reference, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			d, err := ParseDigest(s)
			return Reference{Digest: d}, err
		}
	}
	if err := ValidateTag(s); err != nil {
		return Reference{}, err
	}
	return Reference{Tag: s}, nil
}
