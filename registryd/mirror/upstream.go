package mirror

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors of an upstream request; match with errors.Is.
var (
	// ErrUpstreamNotFound: the upstream answered 404 (the image is gone).
	ErrUpstreamNotFound = errors.New("not found upstream")
	// ErrUpstreamUnavailable: no answer, or one that is not the content
	// (5xx, 429, refused credentials).
	ErrUpstreamUnavailable = errors.New("upstream unavailable")
)

// manifestAccept is every manifest type registryd stores.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// maxTransports bounds the per-repository transports kept: each holds a
// bearer token for its repository.
const maxTransports = 1024

// client talks to one upstream. Credentials stay inside the
// authenticator: they are never logged, and never part of an error.
type client struct {
	up       Upstream
	endpoint *url.URL
	reg      name.Registry
	auth     authn.Authenticator
	base     http.RoundTripper

	mu         sync.Mutex
	transports map[string]http.RoundTripper // by remote repository
}

func newClient(up Upstream, base http.RoundTripper) (*client, error) {
	e, err := url.Parse(up.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	var opts []name.Option
	if e.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(e.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: upstream %q: %w", ErrConfig, up.Host, err)
	}
	c := &client{up: up, endpoint: e, reg: reg, auth: authn.Anonymous, transports: map[string]http.RoundTripper{}}
	if up.UsernameFile != "" {
		user, err := os.ReadFile(up.UsernameFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: reading usernameFile: %w", up.Host, err)
		}
		pass, err := os.ReadFile(up.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: reading passwordFile: %w", up.Host, err)
		}
		c.auth = authn.FromConfig(authn.AuthConfig{Username: strings.TrimSpace(string(user)), Password: strings.TrimRight(string(pass), "\r\n")})
	}
	if base == nil {
		t := &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
		}
		if up.CAFile != "" {
			pem, err := os.ReadFile(up.CAFile)
			if err != nil {
				return nil, fmt.Errorf("upstream %q: reading caFile: %w", up.Host, err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: upstream %q: caFile holds no PEM certificate", ErrConfig, up.Host)
			}
			t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		base = t
	}
	c.base = base
	return c, nil
}

// transport authenticates requests for repository repo (the upstream's
// token flow or basic auth, as its /v2/ challenge asks); one per
// repository, kept, so the ping and the token are not repeated.
func (c *client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	c.mu.Lock()
	t, ok := c.transports[repo]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	t, err := transport.NewWithContext(ctx, c.reg, c.auth, c.base, []string{"repository:" + repo + ":pull"})
	if err != nil {
		return nil, c.wrap(err)
	}
	c.mu.Lock()
	if len(c.transports) >= maxTransports {
		clear(c.transports)
	}
	c.transports[repo] = t
	c.mu.Unlock()
	return t, nil
}

// forget drops repo's transport, so the next request pings and
// authenticates again (after an upstream restart, a refused token).
func (c *client) forget(repo string) {
	c.mu.Lock()
	delete(c.transports, repo)
	c.mu.Unlock()
}

// wrap turns a failure to reach the upstream into ErrUpstreamUnavailable,
// with the upstream's host, never its credentials.
func (c *client) wrap(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s: %w", c.up.Host, ErrUpstreamNotFound)
	}
	return fmt.Errorf("%s: %w: %w", c.up.Host, ErrUpstreamUnavailable, err)
}

// do sends method to path (under /v2/<repo>/) and returns the response
// when its status is 200; the caller closes its body.
func (c *client) do(ctx context.Context, method, repo, path, accept string) (*http.Response, error) {
	t, err := c.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := *c.endpoint
	u.Path = "/v2/" + repo + "/" + path
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		c.forget(repo)
		return nil, c.wrap(err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp, nil
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%s/%s %s: %w", c.up.Host, repo, path, ErrUpstreamNotFound)
	case http.StatusUnauthorized, http.StatusForbidden:
		c.forget(repo)
	}
	resp.Body.Close()
	return nil, fmt.Errorf("%s/%s %s: %w: HTTP %d", c.up.Host, repo, path, ErrUpstreamUnavailable, resp.StatusCode)
}

// headManifest is the upstream's descriptor of repo:ref. A HEAD does not
// count against Docker Hub's pull rate limit.
func (c *client) headManifest(ctx context.Context, repo, ref string) (ocispec.Descriptor, error) {
	resp, err := c.do(ctx, http.MethodHead, repo, "manifests/"+ref, manifestAccept)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	resp.Body.Close()
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s/%s:%s: HEAD without a valid Docker-Content-Digest: %w: %w", c.up.Host, repo, ref, ErrUpstreamUnavailable, err)
	}
	return ocispec.Descriptor{MediaType: resp.Header.Get("Content-Type"), Digest: d, Size: resp.ContentLength}, nil
}

// getManifest reads manifest d of repo, at most limit bytes.
func (c *client) getManifest(ctx context.Context, repo string, d digest.Digest, limit int64) ([]byte, string, error) {
	resp, err := c.do(ctx, http.MethodGet, repo, "manifests/"+d.String(), manifestAccept)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", c.wrap(err)
	}
	if int64(len(body)) > limit {
		return nil, "", fmt.Errorf("%s/%s@%s: manifest larger than %d bytes: %w", c.up.Host, repo, d, limit, ErrUpstreamUnavailable)
	}
	return body, resp.Header.Get("Content-Type"), nil
}

// headBlob is the size of blob d of repo upstream.
func (c *client) headBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	resp, err := c.do(ctx, http.MethodHead, repo, "blobs/"+d.String(), "")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("%s/%s@%s: HEAD without a length: %w", c.up.Host, repo, d, ErrUpstreamUnavailable)
	}
	return resp.ContentLength, nil
}

// getBlob opens blob d of repo upstream; size is -1 when not announced.
func (c *client) getBlob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	resp, err := c.do(ctx, http.MethodGet, repo, "blobs/"+d.String(), "")
	if err != nil {
		return nil, 0, err
	}
	size := resp.ContentLength
	if s := resp.Header.Get("Content-Length"); size < 0 && s != "" {
		size, _ = strconv.ParseInt(s, 10, 64)
	}
	return resp.Body, size, nil
}
