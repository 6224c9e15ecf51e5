package errcode

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	cause := errors.New("disk on fire")
	tests := []struct {
		name       string
		method     string
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{"code with detail", "GET", BlobUnknown.With("sha256:x"), 404, "BLOB_UNKNOWN", ""},
		{"wrapped deeper", "GET", fmt.Errorf("ctx: %w", NameInvalid.New()), 400, "NAME_INVALID", ""},
		{"too large", "PUT", ManifestTooLarge.New(), 413, "MANIFEST_INVALID", ""},
		{"plain error is UNKNOWN", "GET", cause, 500, "UNKNOWN", ""},
		{"retryable", "GET", &Error{Code: Unavailable, RetryAfter: 3, Err: cause}, 503, "UNAVAILABLE", "3"},
		{"HEAD has no body", "HEAD", ManifestUnknown.New(), 404, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			Write(w, httptest.NewRequest(tt.method, "/v2/", nil), tt.err)
			if w.Code != tt.status || w.Header().Get("Retry-After") != tt.retryAfter {
				t.Fatalf("status %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
			}
			if tt.method == "HEAD" {
				if w.Body.Len() != 0 {
					t.Fatalf("HEAD body %q", w.Body)
				}
				return
			}
			var env struct {
				Errors []struct{ Code, Message string } `json:"errors"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || len(env.Errors) != 1 || env.Errors[0].Code != tt.code || env.Errors[0].Message == "" {
				t.Fatalf("envelope %s (%v)", w.Body, err)
			}
			if w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", w.Header().Get("Content-Type"))
			}
		})
	}
}

func TestErrorsIsAndUnwrap(t *testing.T) {
	cause := errors.New("cause")
	err := fmt.Errorf("handler: %w", DigestInvalid.Wrap(cause, "sha256:x"))
	if !errors.Is(err, DigestInvalid.New()) || errors.Is(err, BlobUnknown.New()) {
		t.Fatal("errors.Is does not match by code")
	}
	if !errors.Is(err, cause) {
		t.Fatal("cause not reachable with errors.Is")
	}
	// Same name, different status: distinct codes.
	if errors.Is(ManifestTooLarge.New(), ManifestInvalid.New()) {
		t.Fatal("413 MANIFEST_INVALID matched the 400 one")
	}
}
