package bucket

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestIsolatedIgnoresProcessCredentials: the process holds working
// credentials for each real object store; an isolated open with none of its
// own must refuse, not use them.
func TestIsolatedIgnoresProcessCredentials(t *testing.T) {
	for _, kind := range storageservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := storageservers.Start(t, kind)
			for k, v := range srv.Env {
				t.Setenv(k, v) // not parallel: the process environment
			}
			if err := openAndProbe(t, srv.URL, nil); err != nil {
				t.Fatalf("the process's own credentials do not work, so the test proves nothing: %v", err)
			}
			b, err := Open(t.Context(), srv.URL, Options{Prefix: "probe-test/", Isolated: true})
			if err == nil {
				err = Probe(t.Context(), b)
				b.Close()
			}
			if !errors.Is(err, ErrNoCredentials) {
				t.Fatalf("isolated open with no credentials: %v, want ErrNoCredentials", err)
			}
		})
	}
	t.Run("gcs key path", func(t *testing.T) {
		_, err := Open(t.Context(), "gs://bucket", Options{Env: map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/token"}})
		if err == nil || !strings.Contains(err.Error(), "not a path") {
			t.Fatalf("a key path in a secretRef: %v, want refused", err)
		}
	})
	t.Run("gcs external account", func(t *testing.T) {
		key := `{"type": "external_account", "credential_source": {"file": "/var/run/secrets/token"}}`
		_, err := Open(t.Context(), "gs://bucket", Options{Env: map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": key}})
		if err == nil || !strings.Contains(err.Error(), "service_account") {
			t.Fatalf("an external_account key in a secretRef: %v, want refused", err)
		}
	})
}

// TestDialPolicy: an endpoint on a refused network is never connected to,
// whatever the credentials; an allowed one is.
func TestDialPolicy(t *testing.T) {
	srv := storageservers.Start(t, storageservers.S3)
	tests := []struct {
		name    string
		allowed []netip.Prefix
		wantErr string
	}{
		{"loopback refused by default", nil, ErrEndpointRefused.Error()},
		{"loopback allowed", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(t.Context(), srv.URL, Options{Prefix: "probe-test/", Env: srv.Env, DialControl: DialPolicy{Allowed: tc.allowed}.Control})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			err = Probe(t.Context(), b)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("probe: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("probe: %v, want %q", err, tc.wantErr)
			}
		})
	}
	for _, addr := range []string{"169.254.169.254:80", "[fd00:ec2::254]:80", "[::1]:80", "0.0.0.0:80"} {
		if err := (DialPolicy{}).Control("tcp", addr, nil); !errors.Is(err, ErrEndpointRefused) {
			t.Errorf("%s: %v, want refused", addr, err)
		}
	}
	if err := (DialPolicy{}).Control("tcp", "10.0.0.7:9000", nil); err != nil {
		t.Errorf("an in-cluster address: %v", err)
	}
}
