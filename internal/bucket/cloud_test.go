package bucket

import (
	"maps"
	"strings"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestProbeCloud opens each real object store with the credentials a
// Registry's secretRef would hold (Options.Env, never the process env) and
// probes it; wrong or missing credentials must fail with an error that
// says what is wrong.
func TestProbeCloud(t *testing.T) {
	for _, kind := range storageservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			srv := storageservers.Start(t, kind)
			with := func(k, v string) map[string]string {
				env := maps.Clone(srv.Env)
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
				return env
			}
			tests := []probeCase{
				{name: "right credentials", env: srv.Env},
			}
			switch kind {
			case storageservers.S3:
				tests = append(tests,
					probeCase{"wrong secret", with("AWS_SECRET_ACCESS_KEY", "wrong"), "SignatureDoesNotMatch"},
					probeCase{"unknown key", with("AWS_ACCESS_KEY_ID", "nobody"), "access key"},
					probeCase{"no key", with("AWS_ACCESS_KEY_ID", ""), "no AWS_ACCESS_KEY_ID"},
				)
			case storageservers.Azure:
				tests = append(tests,
					probeCase{"wrong key", with("AZURE_STORAGE_KEY", "d3Jvbmcga2V5"), "AuthorizationFailure"},
					probeCase{"no key", with("AZURE_STORAGE_KEY", ""), "neither AZURE_STORAGE_ACCOUNT"},
				)
			case storageservers.GCS:
				// fake-gcs-server checks no credentials, so only what the
				// operator can see for itself is tested: a key that is not one.
				tests = append(tests,
					probeCase{"malformed key", map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": `{"type": "nonsense"}`}, "GOOGLE_APPLICATION_CREDENTIALS"},
					probeCase{"no key", map[string]string{"UNRELATED": "x"}, "no GOOGLE_APPLICATION_CREDENTIALS"},
				)
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					err := openAndProbe(t, srv.URL, tc.env)
					switch {
					case tc.wantErr == "" && err != nil:
						t.Fatalf("probe: %v", err)
					case tc.wantErr != "" && err == nil:
						t.Fatalf("probe succeeded, want an error containing %q", tc.wantErr)
					case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
						t.Fatalf("probe error %q does not contain %q", err, tc.wantErr)
					}
				})
			}
		})
	}
}

type probeCase struct {
	name    string
	env     map[string]string
	wantErr string // "" for success; else a substring of the error
}

func openAndProbe(t *testing.T, url string, env map[string]string) error {
	b, err := Open(t.Context(), url, Options{Prefix: "probe-test/", Env: env})
	if err != nil {
		return err
	}
	defer b.Close()
	return Probe(t.Context(), b)
}
