// Package mirror makes registryd a pull-through cache for other registries
// (docs/mirror.md): a pull for an upstream host (containerd's ?ns=, or the
// path form <host>/<repo>) is served from the bucket, or fetched from the
// upstream once, verified, stored and served.
package mirror

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/stevedore-dev/stevedore/registryd/reference"
)

// Defaults of Config.
const (
	DefaultTagTTL = 5 * time.Minute
	// dockerHub is the host containerd names Docker Hub by; its API lives
	// on another host.
	dockerHub         = "docker.io"
	dockerHubEndpoint = "https://registry-1.docker.io"
)

// ErrConfig: the mirror configuration is invalid.
var ErrConfig = errors.New("invalid mirror configuration")

// Config is registryd's --mirror: the upstreams it caches, as JSON.
type Config struct {
	// TagTTL is how long a cached tag is served before the upstream is
	// asked again (with a HEAD). Default 5m.
	TagTTL Duration `json:"tagTTL,omitempty"`
	// Offline serves the cached copy when the upstream fails or no longer
	// has the image. Default true.
	Offline *bool `json:"offline,omitempty"`
	// Upstreams are the registries mirrored, each under its host name.
	Upstreams []Upstream `json:"upstreams"`
}

// Upstream is one mirrored registry.
type Upstream struct {
	// Host as containerd names it (its ?ns=): docker.io, ghcr.io,
	// registry.example.com:5000.
	Host string `json:"host"`
	// Endpoint is the upstream's base URL; default https://<host>
	// (https://registry-1.docker.io for docker.io). http:// is plain HTTP.
	Endpoint string `json:"endpoint,omitempty"`
	// UsernameFile and PasswordFile hold the upstream credentials (a
	// mounted Secret); read at start, never logged.
	UsernameFile string `json:"usernameFile,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	// CAFile is a PEM bundle trusted for the upstream's TLS, on top of
	// the system's roots.
	CAFile string `json:"caFile,omitempty"`
	// Repositories are path.Match globs of upstream repository names
	// (library/* for Docker Hub's official images); empty: all.
	Repositories []string `json:"repositories,omitempty"`
}

// Duration is a time.Duration written as "5m" in JSON.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// ParseConfig reads --mirror: JSON, or @path for a file of JSON.
func ParseConfig(spec string) (*Config, error) {
	b := []byte(spec)
	if p, ok := strings.CutPrefix(spec, "@"); ok {
		var err error
		if b, err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("reading the mirror configuration: %w", err)
		}
	}
	var c Config
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return &c, c.Validate()
}

// Validate checks c and fills in its defaults.
func (c *Config) Validate() error {
	if c.TagTTL.Duration < 0 {
		return fmt.Errorf("%w: tagTTL is negative", ErrConfig)
	}
	if c.TagTTL.Duration == 0 {
		c.TagTTL.Duration = DefaultTagTTL
	}
	if c.Offline == nil {
		on := true
		c.Offline = &on
	}
	seen := map[string]bool{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		u.Host = strings.ToLower(u.Host)
		if u.Host == "" || strings.ContainsAny(u.Host, "/?#@ ") {
			return fmt.Errorf("%w: upstream %d: host %q is not a registry host", ErrConfig, i, u.Host)
		}
		if err := reference.ValidateName(Prefix(u.Host)); err != nil {
			return fmt.Errorf("%w: upstream host %q: %w", ErrConfig, u.Host, err)
		}
		if seen[u.Host] {
			return fmt.Errorf("%w: upstream %q is listed twice", ErrConfig, u.Host)
		}
		seen[u.Host] = true
		if u.Endpoint == "" {
			u.Endpoint = "https://" + u.Host
			if u.Host == dockerHub {
				u.Endpoint = dockerHubEndpoint
			}
		}
		e, err := url.Parse(u.Endpoint)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || (e.Path != "" && e.Path != "/") {
			return fmt.Errorf("%w: upstream %q: endpoint %q is not http(s)://host[:port]", ErrConfig, u.Host, u.Endpoint)
		}
		if (u.UsernameFile == "") != (u.PasswordFile == "") {
			return fmt.Errorf("%w: upstream %q: usernameFile and passwordFile go together", ErrConfig, u.Host)
		}
		for _, g := range u.Repositories {
			if _, err := path.Match(g, ""); err != nil {
				return fmt.Errorf("%w: upstream %q: repository glob %q: %w", ErrConfig, u.Host, g, err)
			}
		}
	}
	return nil
}

// Prefix is the first component of the local repositories that cache
// upstream host: the host itself, lower case, with a port's ':' as '_'
// (a repository name cannot hold ':'; a host name cannot hold '_', so no
// two hosts share a prefix): docker.io/library/alpine,
// registry.example.com_5000/team/app.
func Prefix(host string) string { return strings.ReplaceAll(strings.ToLower(host), ":", "_") }

// remoteName is the upstream's name for repo: Docker Hub's official images
// live under library/ (containerd asks for library/alpine, a client of
// the path form may say docker.io/alpine).
func remoteName(host, repo string) string {
	if host == dockerHub && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

// matches reports whether the upstream caches repository remote.
func (u *Upstream) matches(remote string) bool {
	if len(u.Repositories) == 0 {
		return true
	}
	for _, g := range u.Repositories {
		if ok, _ := path.Match(g, remote); ok {
			return true
		}
	}
	return false
}
