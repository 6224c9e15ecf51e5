package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	"sigs.k8s.io/yaml"

	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/registryd/auth"
)

const docPage = "docs/workload-identity.md"

// TestDocKubeletConfig: the CredentialProviderConfig docs/workload-identity.md
// tells node admins to write decodes strictly into the kubelet's own types,
// passes the kubelet's checks for tokenAttributes, names this binary, asks
// for the README Registry's audience with cacheType Token (the kubelet
// refuses a plugin that returns the token as the password otherwise), and
// its args are flags this binary takes; the audience ClusterRole on the same
// page grants that audience to the nodes.
func TestDocKubeletConfig(t *testing.T) {
	objs := testutil.DocYAML(t, docPage)
	configs := testutil.DocKind(t, objs, "CredentialProviderConfig")
	if len(configs) != 1 {
		t.Fatalf("%d CredentialProviderConfigs in %s, want 1", len(configs), docPage)
	}
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(configs[0].JSON, &cfg); err != nil {
		t.Fatalf("the kubelet would refuse the page's CredentialProviderConfig: %v", err)
	}
	if cfg.APIVersion != kubeletconfigv1.SchemeGroupVersion.String() || len(cfg.Providers) != 1 {
		t.Fatalf("apiVersion %q, %d providers", cfg.APIVersion, len(cfg.Providers))
	}
	p := cfg.Providers[0]
	audience := auth.DefaultAudience("demo", "registry")
	switch {
	case p.Name != "stevedore-credential-provider":
		t.Errorf("provider name %q is not the binary's name", p.Name)
	case p.APIVersion != credentialproviderv1.SchemeGroupVersion.String():
		t.Errorf("provider apiVersion %q: tokenAttributes need %s", p.APIVersion, credentialproviderv1.SchemeGroupVersion)
	case len(p.MatchImages) == 0 || p.DefaultCacheDuration == nil:
		t.Errorf("matchImages and defaultCacheDuration are required")
	case p.TokenAttributes == nil:
		t.Errorf("no tokenAttributes: the kubelet would send no token")
	case p.TokenAttributes.ServiceAccountTokenAudience != audience:
		t.Errorf("audience %q, want the README Registry's %q", p.TokenAttributes.ServiceAccountTokenAudience, audience)
	case p.TokenAttributes.RequireServiceAccount == nil || !*p.TokenAttributes.RequireServiceAccount:
		t.Errorf("requireServiceAccount must be set, and true")
	case p.TokenAttributes.CacheType != kubeletconfigv1.TokenServiceAccountTokenCacheType:
		t.Errorf("cacheType %q: the plugin returns the token itself, which the kubelet accepts only with Token", p.TokenAttributes.CacheType)
	}
	for _, m := range p.MatchImages {
		if strings.Contains(m, "://") || strings.HasSuffix(m, "/") {
			t.Errorf("matchImages entry %q: want host[:port][/path]", m)
		}
	}
	req := `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"` + p.MatchImages[0] + `/team/app:v1","serviceAccountToken":"t"}`
	var stdout, stderr strings.Builder
	if code := run(p.Args, func(string) string { return "" }, strings.NewReader(req), &stdout, &stderr); code != 0 {
		t.Errorf("the page's args %q: exit %d: %s", p.Args, code, stderr.String())
	}
	var resp credentialproviderv1.CredentialProviderResponse
	if err := json.Unmarshal([]byte(stdout.String()), &resp); err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.Auth[p.MatchImages[0]]; !ok {
		t.Errorf("the answer's auth keys %v do not match matchImages %q", resp.Auth, p.MatchImages[0])
	}

	var granted bool
	for _, o := range testutil.DocKind(t, objs, "ClusterRole") {
		var cr rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict(o.JSON, &cr); err != nil {
			t.Fatal(err)
		}
		for _, r := range cr.Rules {
			granted = granted || slices.Contains(r.Verbs, "request-serviceaccounts-token-audience") &&
				slices.Equal(r.APIGroups, []string{""}) && slices.Contains(r.Resources, audience)
		}
	}
	if !granted {
		t.Errorf("no ClusterRole in %s lets nodes request tokens for %q", docPage, audience)
	}
}
