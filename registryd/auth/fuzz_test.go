package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzAuthorization: whatever a client puts in the Authorization header,
// the guard answers 200 only for real credentials, never panics, and a
// refusal is 401 or 403, or 429 once the failed-login throttle engages
// (the fuzzer sends thousands of bad logins from one address).
func FuzzAuthorization(f *testing.F) {
	for _, seed := range []string{"", "Basic YWxpY2U6YWxpY2UtcHc=", "Basic !!!", "Bearer a.b.c", "Bearer ", "Basic Og==", "Digest x", "basic  YWxpY2U6"} {
		f.Add(seed, "repository:team/app:pull,push")
	}
	g, _ := newHtpasswdGuard(f, Options{Challenge: ChallengeBearer})
	f.Fuzz(func(t *testing.T, header, scope string) {
		r := httptest.NewRequest(http.MethodGet, "http://reg.example/v2/", nil)
		r.Header.Set("Authorization", header)
		err := g.Authorize(context.Background(), r, Access{"team/app", Push})
		if c, _ := credentials(r); err == nil && (c.Bearer || c.Username != "alice" || c.Password != "alice-pw") {
			t.Fatalf("header %q was let in", header)
		}
		if got := status(err); got != 200 && got != 401 && got != 403 && got != 429 {
			t.Fatalf("header %q: status %d", header, got)
		}
		_, _ = parseScope(scope)
	})
}
