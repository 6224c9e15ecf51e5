package main

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

// TestImmutableTagsFlag: --immutable-tags repeats, and an invalid pattern
// stops registryd at start-up rather than protecting nothing.
func TestImmutableTagsFlag(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"repeated", []string{"--immutable-tags", "v[0-9]+", "--immutable-tags=latest"}, []string{"v[0-9]+", "latest"}, ""},
		{"invalid", []string{"--immutable-tags", "v[0-9"}, nil, "missing closing ]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("registryd", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var c config
			bindFlags(fs, &c)
			err := fs.Parse(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(c.immutableTags, tc.want) {
				t.Fatalf("immutableTags = %q (%v), want %q", c.immutableTags, err, tc.want)
			}
		})
	}
}
