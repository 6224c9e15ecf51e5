package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
)

// TestRun: exit codes, stderr and the flags and environment variables that
// set the cache duration.
func TestRun(t *testing.T) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: "system:serviceaccount:demo:puller", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	req := `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"reg.local:5000/app:v1","serviceAccountToken":"` + tok + `"}`
	noToken := `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"reg.local:5000/app:v1"}`
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		stdin      string
		wantCode   int
		wantCache  time.Duration // checked when wantCode is 0 and stdin is a request
		wantStderr string
	}{
		{name: "defaults", stdin: req, wantCache: 10 * time.Minute},
		{name: "flag", args: []string{"--max-cache-duration=2m"}, stdin: req, wantCache: 2 * time.Minute},
		{name: "never cache", args: []string{"--max-cache-duration=0"}, stdin: req, wantCache: 0},
		{name: "env", env: map[string]string{"STEVEDORE_MAX_CACHE_DURATION": "3m"}, stdin: req, wantCache: 3 * time.Minute},
		{name: "flag wins over env", args: []string{"--max-cache-duration=4m"}, env: map[string]string{"STEVEDORE_MAX_CACHE_DURATION": "3m"}, stdin: req, wantCache: 4 * time.Minute},
		{name: "margin from env", args: []string{"--max-cache-duration=2h"}, env: map[string]string{"STEVEDORE_EXPIRY_MARGIN": "30m"}, stdin: req, wantCache: 30 * time.Minute},
		{name: "no token", stdin: noToken, wantCode: 1, wantStderr: "no serviceAccountToken in the request: set tokenAttributes"},
		{name: "garbage", stdin: "{", wantCode: 1, wantStderr: "malformed CredentialProviderRequest"},
		{name: "bad flag value", args: []string{"--max-cache-duration=soon"}, stdin: req, wantCode: 2, wantStderr: "invalid value"},
		{name: "bad env value", env: map[string]string{"STEVEDORE_EXPIRY_MARGIN": "soon"}, stdin: req, wantCode: 2, wantStderr: "$STEVEDORE_EXPIRY_MARGIN"},
		{name: "negative", args: []string{"--expiry-margin=-1m"}, stdin: req, wantCode: 2, wantStderr: "must not be negative"},
		{name: "unknown flag", args: []string{"--audience=x"}, stdin: req, wantCode: 2, wantStderr: "flag provided but not defined"},
		{name: "stray argument", args: []string{"get-credentials"}, stdin: req, wantCode: 2, wantStderr: "unexpected arguments"},
		{name: "version", args: []string{"--version"}, wantCode: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(tc.args, func(k string) string { return tc.env[k] }, strings.NewReader(tc.stdin), &stdout, &stderr)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q, want it to say %q", stderr.String(), tc.wantStderr)
			}
			if code != 0 {
				if stdout.Len() != 0 {
					t.Errorf("stdout on failure: %q", stdout.String())
				}
				return
			}
			if tc.stdin == "" {
				return
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr on success: %q", stderr.String())
			}
			var resp credentialproviderv1.CredentialProviderResponse
			if err := json.Unmarshal([]byte(stdout.String()), &resp); err != nil {
				t.Fatal(err)
			}
			// The token expires in an hour less the test's run time.
			if got := resp.CacheDuration.Duration; got > tc.wantCache || got < tc.wantCache-2*time.Second {
				t.Errorf("cacheDuration %v, want %v", got, tc.wantCache)
			}
		})
	}
}
