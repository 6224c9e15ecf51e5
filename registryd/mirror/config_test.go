package mirror

import (
	"errors"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		wantErr    bool
		check      func(t *testing.T, c *Config)
	}{
		{"defaults", `{"upstreams":[{"host":"docker.io"},{"host":"Registry.Example.com:5000"}]}`, false, func(t *testing.T, c *Config) {
			if c.TagTTL.Duration != DefaultTagTTL || !*c.Offline {
				t.Errorf("tagTTL %v offline %v", c.TagTTL, *c.Offline)
			}
			if c.Upstreams[0].Endpoint != "https://registry-1.docker.io" || c.Upstreams[1].Endpoint != "https://registry.example.com:5000" {
				t.Errorf("endpoints %q %q", c.Upstreams[0].Endpoint, c.Upstreams[1].Endpoint)
			}
		}},
		{"set", `{"tagTTL":"30s","offline":false,"upstreams":[{"host":"ghcr.io","endpoint":"http://127.0.0.1:5000","repositories":["org/*"]}]}`, false, func(t *testing.T, c *Config) {
			if c.TagTTL.Duration != 30*time.Second || *c.Offline || c.Upstreams[0].Endpoint != "http://127.0.0.1:5000" {
				t.Errorf("config %+v", c)
			}
		}},
		{"unknown field", `{"upstreams":[{"host":"a.io","user":"x"}]}`, true, nil},
		{"host with a path", `{"upstreams":[{"host":"a.io/x"}]}`, true, nil},
		{"host twice", `{"upstreams":[{"host":"a.io"},{"host":"A.io"}]}`, true, nil},
		{"endpoint with a path", `{"upstreams":[{"host":"a.io","endpoint":"https://a.io/v2"}]}`, true, nil},
		{"endpoint not http", `{"upstreams":[{"host":"a.io","endpoint":"ftp://a.io"}]}`, true, nil},
		{"username without password", `{"upstreams":[{"host":"a.io","usernameFile":"/u"}]}`, true, nil},
		{"bad glob", `{"upstreams":[{"host":"a.io","repositories":["[x"]}]}`, true, nil},
		{"negative TTL", `{"tagTTL":"-1s","upstreams":[]}`, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.json)
			if tc.wantErr {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestRoute(t *testing.T) {
	c := &Config{Upstreams: []Upstream{
		{Host: "docker.io", Repositories: []string{"library/*"}},
		{Host: "registry.example.com:5000"},
	}}
	m, err := New(c, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns, name, wantLocal string
		wantErr             error
	}{
		{"docker.io", "library/alpine", "docker.io/library/alpine", nil},
		{"index.docker.io", "library/alpine", "docker.io/library/alpine", nil},
		{"", "docker.io/alpine", "docker.io/library/alpine", nil},
		{"", "docker.io/library/alpine", "docker.io/library/alpine", nil},
		{"docker.io", "bitnami/redis", "", ErrNotMirrored},
		{"registry.example.com:5000", "team/app", "registry.example.com_5000/team/app", nil},
		{"", "registry.example.com_5000/team/app", "registry.example.com_5000/team/app", nil},
		{"quay.io", "team/app", "", ErrNotMirrored},
		{"", "team/app", "", nil}, // the registry's own
	} {
		t.Run(tc.ns+" "+tc.name, func(t *testing.T) {
			rt, err := m.Route(tc.ns, tc.name)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			got := ""
			if rt != nil {
				got = rt.Local
			}
			if got != tc.wantLocal {
				t.Fatalf("local %q, want %q", got, tc.wantLocal)
			}
		})
	}
}
