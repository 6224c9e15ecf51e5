package credentialprovider

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	credentialproviderapi "k8s.io/kubelet/pkg/apis/credentialprovider"
	"k8s.io/kubelet/pkg/apis/credentialprovider/install"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// token is a JWT with the claims a kubelet-minted token carries (the
// signature is not checked here: registryd's TokenReview does that).
func token(t *testing.T, sub string, exp time.Time) string {
	t.Helper()
	c := jwt.RegisteredClaims{Subject: sub, Audience: jwt.ClaimStrings{"stevedore.dev/registry/demo/registry"}, IssuedAt: jwt.NewNumericDate(now)}
	if !exp.IsZero() {
		c.ExpiresAt = jwt.NewNumericDate(exp)
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte("test key"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func request(image, tok string) string {
	return `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"` + image + `","serviceAccountToken":"` + tok + `"}`
}

// TestRespond: request in, response out, as the kubelet sends and reads
// them; the response goes through the kubelet's own strict decoder.
func TestRespond(t *testing.T) {
	const sa, user = "system:serviceaccount:demo:puller", "demo/puller"
	hour := token(t, sa, now.Add(time.Hour))
	opts := Options{MaxCacheDuration: DefaultMaxCacheDuration, ExpiryMargin: DefaultExpiryMargin, Now: func() time.Time { return now }}
	tests := []struct {
		name      string
		opts      *Options // nil: opts
		in        string
		wantErr   error
		wantHost  string
		wantUser  string
		wantToken string
		wantCache time.Duration
	}{
		{name: "pod token, an hour left", in: request("10.0.0.5:30500/team/app:v1", hour),
			wantHost: "10.0.0.5:30500", wantUser: user, wantToken: hour, wantCache: 10 * time.Minute},
		{name: "by digest, DNS host without port", in: request("registry.example.com/team/app@sha256:"+strings.Repeat("a", 64), hour),
			wantHost: "registry.example.com", wantUser: user, wantToken: hour, wantCache: 10 * time.Minute},
		{name: "localhost", in: request("localhost/app:v1", hour), wantHost: "localhost", wantUser: user, wantToken: hour, wantCache: 10 * time.Minute},
		{name: "IPv6 host", in: request("[fd00::1]:5000/app:v1", hour), wantHost: "[fd00::1]:5000", wantUser: user, wantToken: hour, wantCache: 10 * time.Minute},
		{
			// The kubelet's token manager hands a token out until 80% of
			// its life has passed: 12 of 60 minutes may be left.
			name: "token near its refresh", in: request("reg.local:5000/app:v1", token(t, sa, now.Add(12*time.Minute))),
			wantHost: "reg.local:5000", wantUser: user, wantCache: 7 * time.Minute,
		},
		{name: "token inside the margin: never cached", in: request("reg.local:5000/app:v1", token(t, sa, now.Add(3*time.Minute))),
			wantHost: "reg.local:5000", wantUser: user, wantCache: 0},
		{name: "expired token: passed on, never cached", in: request("reg.local:5000/app:v1", token(t, sa, now.Add(-time.Minute))),
			wantHost: "reg.local:5000", wantUser: user, wantCache: 0},
		{name: "token without expiry: never cached", in: request("reg.local:5000/app:v1", token(t, sa, time.Time{})),
			wantHost: "reg.local:5000", wantUser: user, wantCache: 0},
		{name: "another subject: default user", in: request("reg.local:5000/app:v1", token(t, "system:node:n1", now.Add(time.Hour))),
			wantHost: "reg.local:5000", wantUser: DefaultUsername, wantCache: 10 * time.Minute},
		{name: "malformed ServiceAccount subject: default user", in: request("reg.local:5000/app:v1", token(t, "system:serviceaccount:demo", now.Add(time.Hour))),
			wantHost: "reg.local:5000", wantUser: DefaultUsername, wantCache: 10 * time.Minute},
		{name: "opaque token: default user, never cached", in: request("reg.local:5000/app:v1", "not-a-jwt"),
			wantHost: "reg.local:5000", wantUser: DefaultUsername, wantToken: "not-a-jwt", wantCache: 0},
		{name: "caching off", opts: &Options{MaxCacheDuration: 0, ExpiryMargin: time.Minute, Now: opts.Now}, in: request("reg.local:5000/app:v1", hour),
			wantHost: "reg.local:5000", wantUser: user, wantCache: 0},
		{name: "no margin", opts: &Options{MaxCacheDuration: 2 * time.Hour, Now: opts.Now}, in: request("reg.local:5000/app:v1", hour),
			wantHost: "reg.local:5000", wantUser: user, wantCache: time.Hour},
		{
			name:     "annotations and fields of later versions are ignored",
			in:       `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"reg.local/app","serviceAccountToken":"` + hour + `","serviceAccountAnnotations":{"a":"b"},"future":1}`,
			wantHost: "reg.local", wantUser: user, wantToken: hour, wantCache: 10 * time.Minute,
		},

		{name: "missing token", in: `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"reg.local/app"}`, wantErr: ErrNoToken},
		{name: "empty token", in: request("reg.local/app", ""), wantErr: ErrNoToken},
		{name: "v1beta1 request", in: strings.Replace(request("reg.local/app", hour), "/v1", "/v1beta1", 1), wantErr: ErrAPIVersion},
		{name: "another group", in: strings.Replace(request("reg.local/app", hour), "credentialprovider.kubelet.k8s.io", "example.com", 1), wantErr: ErrAPIVersion},
		{name: "no apiVersion", in: `{"kind":"CredentialProviderRequest","image":"reg.local/app","serviceAccountToken":"x"}`, wantErr: ErrAPIVersion},
		{name: "a response sent as request", in: strings.Replace(request("reg.local/app", hour), "Request", "Response", 1), wantErr: ErrAPIVersion},
		{name: "empty input", in: "", wantErr: ErrMalformed},
		{name: "not JSON", in: "image: reg.local/app\n", wantErr: ErrMalformed},
		{name: "truncated", in: request("reg.local/app", hour)[:60], wantErr: ErrMalformed},
		{name: "wrong field type", in: `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":5}`, wantErr: ErrMalformed},
		{name: "larger than a MiB", in: request("reg.local/app", strings.Repeat("x", maxRequestBytes)), wantErr: ErrMalformed},
		{name: "Docker Hub short name", in: request("alpine:3", hour), wantErr: ErrImage},
		{name: "Docker Hub path", in: request("library/alpine:3", hour), wantErr: ErrImage},
		{name: "no image", in: request("", hour), wantErr: ErrImage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			if tc.opts != nil {
				o = *tc.opts
			}
			resp, err := Respond(strings.NewReader(tc.in), o)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := Write(&out, resp); err != nil {
				t.Fatal(err)
			}
			got := kubeletDecode(t, out.Bytes())
			if got.CacheKeyType != credentialproviderapi.RegistryPluginCacheKeyType {
				t.Errorf("cacheKeyType %q", got.CacheKeyType)
			}
			if got.CacheDuration == nil || got.CacheDuration.Duration != tc.wantCache {
				t.Errorf("cacheDuration %v, want %v (a nil one means the kubelet's default)", got.CacheDuration, tc.wantCache)
			}
			if len(got.Auth) != 1 {
				t.Fatalf("auth %v, want one entry for %s", got.Auth, tc.wantHost)
			}
			a, ok := got.Auth[tc.wantHost]
			if !ok {
				t.Fatalf("auth keys %v, want %s", got.Auth, tc.wantHost)
			}
			if a.Username != tc.wantUser {
				t.Errorf("username %q, want %q", a.Username, tc.wantUser)
			}
			// Basic auth ends the user name at its first colon.
			if strings.Contains(a.Username, ":") {
				t.Errorf("username %q holds a colon", a.Username)
			}
			if tc.wantToken != "" && a.Password != tc.wantToken {
				t.Errorf("password is not the request's token")
			}
		})
	}
}

// kubeletDecode reads a response the way the kubelet's exec plugin runner
// does: the apiVersion must be the one it sent, then a strict decode.
func kubeletDecode(t *testing.T, data []byte) *credentialproviderapi.CredentialProviderResponse {
	t.Helper()
	gvk, err := json.DefaultMetaFactory.Interpret(data)
	if err != nil {
		t.Fatal(err)
	}
	if gvk.GroupVersion() != credentialproviderv1.SchemeGroupVersion {
		t.Fatalf("response apiVersion %v", gvk.GroupVersion())
	}
	scheme := runtime.NewScheme()
	install.Install(scheme)
	obj, gvk, err := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("the kubelet's decoder refuses the response: %v\n%s", err, data)
	}
	if gvk.Kind != "CredentialProviderResponse" {
		t.Fatalf("kind %q", gvk.Kind)
	}
	return obj.(*credentialproviderapi.CredentialProviderResponse)
}
