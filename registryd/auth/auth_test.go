package auth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMiddleware(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	tests := []struct {
		name   string
		opts   Options
		method string
		want   int
	}{
		{"none lets a push in", Options{Mode: None}, http.MethodPut, http.StatusOK},
		{"none lets a pull in", Options{Mode: None}, http.MethodGet, http.StatusOK},
		{"kubernetes refuses an anonymous push", Options{Mode: Kubernetes}, http.MethodPut, http.StatusUnauthorized},
		{"kubernetes refuses an anonymous pull", Options{Mode: Kubernetes}, http.MethodGet, http.StatusUnauthorized},
		{"htpasswd refuses an anonymous delete", Options{Mode: Htpasswd}, http.MethodDelete, http.StatusUnauthorized},
		{"anonymous pull serves GET", Options{Mode: Kubernetes, AnonymousPull: true}, http.MethodGet, http.StatusOK},
		{"anonymous pull serves HEAD", Options{Mode: Htpasswd, AnonymousPull: true}, http.MethodHead, http.StatusOK},
		{"anonymous pull never serves a push", Options{Mode: Kubernetes, AnonymousPull: true}, http.MethodPost, http.StatusUnauthorized},
		{"anonymous pull never serves a PATCH", Options{Mode: Kubernetes, AnonymousPull: true}, http.MethodPatch, http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Realm = "test"
			rec := httptest.NewRecorder()
			Middleware(ok, tc.opts).ServeHTTP(rec, httptest.NewRequest(tc.method, "/v2/team/app/blobs/uploads/", nil))
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d", rec.Code, tc.want)
			}
			if tc.want != http.StatusUnauthorized {
				return
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != `Basic realm="test"` {
				t.Errorf("challenge %q", got)
			}
			var env struct{ Errors []struct{ Code string } }
			if tc.method != http.MethodHead {
				if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || len(env.Errors) != 1 || env.Errors[0].Code != "UNAUTHORIZED" {
					t.Errorf("body %s", rec.Body)
				}
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"none", "htpasswd", "kubernetes"} {
		if _, err := ParseMode(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseMode("open"); err == nil {
		t.Error("ParseMode(open) succeeded")
	}
}
