package reference

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"library/alpine", true},
		{"a", true},
		{"a/b/c/d", true},
		{"foo.bar_baz__q-x--y/z", true},
		{"", false},
		{"../x", false},
		{"x/..", false},
		{"Upper/case", false},
		{"a//b", false},
		{"/a", false},
		{"a/", false},
		{"_layers", false},
		{"a/_manifests", false},
		{"a..b", false},
		{"a___b", false},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
		{strings.Repeat("a", 300), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrName) {
				t.Fatalf("error %v is not ErrName", err)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	const hex256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	tests := []struct {
		in      string
		wantTag string
		wantDig string
		wantErr error
	}{
		{"latest", "latest", "", nil},
		{"v1.2.3-rc_1", "v1.2.3-rc_1", "", nil},
		{"_x", "_x", "", nil},
		{strings.Repeat("t", 128), strings.Repeat("t", 128), "", nil},
		{strings.Repeat("t", 129), "", "", ErrTag},
		{".hidden", "", "", ErrTag},
		{"-x", "", "", ErrTag},
		{"a/b", "", "", ErrTag},
		{"", "", "", ErrTag},
		{"sha256:" + hex256, "", "sha256:" + hex256, nil},
		{"sha256:baddigeststring", "", "", ErrDigest},
		{"sha256:" + strings.ToUpper(hex256), "", "", ErrDigest},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", "", "", ErrDigest},
		{"sha512:" + strings.Repeat("ab", 64), "", "sha512:" + strings.Repeat("ab", 64), nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ref, err := ParseReference(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseReference(%q) error = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.in, err)
			}
			if ref.Tag != tt.wantTag || ref.Digest.String() != tt.wantDig {
				t.Fatalf("ParseReference(%q) = %+v", tt.in, ref)
			}
		})
	}
}

// FuzzParseReference checks that whatever parses is safe to use as a bucket
// key component: no path traversal, no separators in tags, bounded length.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"latest", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "../..", "a/b", "sha512:00", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParseReference(s)
		if err != nil {
			return
		}
		key := ref.String()
		// One path component, never "." or "..": "0.." is a fine tag.
		if strings.Contains(key, "/") || key == "." || key == ".." || len(key) > 200 {
			t.Fatalf("unsafe reference accepted: %q", key)
		}
		if ref.Digest != "" {
			if err := ref.Digest.Validate(); err != nil {
				t.Fatalf("accepted invalid digest %q: %v", key, err)
			}
		}
	})
}

// FuzzValidateName checks accepted names cannot escape their prefix.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"library/alpine", "../x", "a//b", "A", "a/_tags/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName(s) != nil {
			return
		}
		if strings.Contains(s, "..") || strings.Contains(s, "//") || strings.HasPrefix(s, "/") ||
			strings.Contains(s, "/_") || strings.HasPrefix(s, "_") || len(s) > MaxNameLength {
			t.Fatalf("unsafe name accepted: %q", s)
		}
	})
}
