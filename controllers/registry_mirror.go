package controllers

import (
	"encoding/json"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// mirrorDir holds, per upstream i, its credentials (mirrorDir/i/credentials/
// username and password) and CA bundle (mirrorDir/i/ca/ca.crt).
const mirrorDir = "/etc/stevedore/mirror"

// Keys of a mirror upstream's credentials Secret.
const (
	mirrorUsernameKey = "username"
	mirrorPasswordKey = "password"
	mirrorCAFile      = "ca.crt"
)

// mirrorConfig is registryd's --mirror (registryd/mirror.Config): no
// secret in it, only the paths where the Secrets are mounted.
type mirrorConfig struct {
	TagTTL    string           `json:"tagTTL,omitempty"`
	Offline   *bool            `json:"offline,omitempty"`
	Upstreams []mirrorUpstream `json:"upstreams"`
}

type mirrorUpstream struct {
	Host         string   `json:"host"`
	Endpoint     string   `json:"endpoint,omitempty"`
	UsernameFile string   `json:"usernameFile,omitempty"`
	PasswordFile string   `json:"passwordFile,omitempty"`
	CAFile       string   `json:"caFile,omitempty"`
	Repositories []string `json:"repositories,omitempty"`
}

// mirrorArgs are registryd's flags for spec.mirror.
func mirrorArgs(reg *v1.Registry) []string {
	m := reg.Spec.Mirror
	if m == nil {
		return nil
	}
	c := mirrorConfig{Offline: m.Offline, Upstreams: []mirrorUpstream{}}
	if m.TagTTL != nil && m.TagTTL.Duration > 0 {
		c.TagTTL = m.TagTTL.Duration.String()
	}
	for i, u := range m.Upstreams {
		mu := mirrorUpstream{Host: u.Host, Endpoint: u.Endpoint, Repositories: u.Repositories}
		if u.CredentialsSecretRef != nil {
			mu.UsernameFile = path.Join(mirrorUpstreamDir(i), "credentials", mirrorUsernameKey)
			mu.PasswordFile = path.Join(mirrorUpstreamDir(i), "credentials", mirrorPasswordKey)
		}
		if u.CABundle != nil {
			mu.CAFile = path.Join(mirrorUpstreamDir(i), "ca", mirrorCAFile)
		}
		c.Upstreams = append(c.Upstreams, mu)
	}
	b, _ := json.Marshal(c)
	return []string{"--mirror=" + string(b)}
}

func mirrorUpstreamDir(i int) string { return path.Join(mirrorDir, strconv.Itoa(i)) }

// mirrorVolumes mount each upstream's credentials and CA bundle, the
// whole volume (never subPath), the keys named.
func mirrorVolumes(reg *v1.Registry) ([]*corev1ac.VolumeApplyConfiguration, []*corev1ac.VolumeMountApplyConfiguration) {
	if reg.Spec.Mirror == nil {
		return nil, nil
	}
	var vs []*corev1ac.VolumeApplyConfiguration
	var ms []*corev1ac.VolumeMountApplyConfiguration
	for i, u := range reg.Spec.Mirror.Upstreams {
		if ref := u.CredentialsSecretRef; ref != nil {
			name := "mirror-" + strconv.Itoa(i) + "-credentials"
			vs = append(vs, corev1ac.Volume().WithName(name).WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(ref.Name).
				WithItems(corev1ac.KeyToPath().WithKey(mirrorUsernameKey).WithPath(mirrorUsernameKey),
					corev1ac.KeyToPath().WithKey(mirrorPasswordKey).WithPath(mirrorPasswordKey))))
			ms = append(ms, corev1ac.VolumeMount().WithName(name).WithMountPath(path.Join(mirrorUpstreamDir(i), "credentials")).WithReadOnly(true))
		}
		if ca := u.CABundle; ca != nil {
			name := "mirror-" + strconv.Itoa(i) + "-ca"
			v := corev1ac.Volume().WithName(name)
			if ref := ca.ConfigMapKeyRef; ref != nil {
				v.WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(ref.Name).
					WithItems(corev1ac.KeyToPath().WithKey(ref.Key).WithPath(mirrorCAFile)))
			} else if ref := ca.SecretKeyRef; ref != nil {
				v.WithSecret(corev1ac.SecretVolumeSource().WithSecretName(ref.Name).
					WithItems(corev1ac.KeyToPath().WithKey(ref.Key).WithPath(mirrorCAFile)))
			}
			vs = append(vs, v)
			ms = append(ms, corev1ac.VolumeMount().WithName(name).WithMountPath(path.Join(mirrorUpstreamDir(i), "ca")).WithReadOnly(true))
		}
	}
	return vs, ms
}

// certsDir is where containerd looks for hosts.toml (config_path).
const certsDir = "/etc/containerd/certs.d"

// mirrorStatus is the hosts.toml of each upstream, naming the Service's
// ClusterIP (nodes cannot resolve Service names; kube-proxy serves the
// ClusterIP on every node). Nil without spec.mirror or before the Service
// has an IP.
func mirrorStatus(reg *v1.Registry, svc *corev1.Service) *v1.MirrorStatus {
	m := reg.Spec.Mirror
	ip := svc.Spec.ClusterIP
	if m == nil || ip == "" || ip == corev1.ClusterIPNone {
		return nil
	}
	scheme := "http"
	if reg.Spec.TLS != nil {
		scheme = "https"
	}
	mirrorURL := scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(int(servicePort(reg))))
	st := &v1.MirrorStatus{}
	for _, u := range m.Upstreams {
		st.Hosts = append(st.Hosts, v1.MirrorHostConfig{Host: u.Host, Path: path.Join(certsDir, u.Host, "hosts.toml"), HostsTOML: HostsTOML(reg, u, mirrorURL)})
	}
	return st
}

// HostsTOML is containerd's hosts.toml making mirrorURL (the Registry) the
// first host tried for upstream u, the upstream itself the fallback; the
// e2e tests hand it to a real containerd.
func HostsTOML(reg *v1.Registry, u v1.MirrorUpstream, mirrorURL string) string {
	server := u.Endpoint
	if server == "" {
		server = "https://" + u.Host
		if u.Host == "docker.io" {
			server = "https://registry-1.docker.io"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Registry %s/%s mirrors %s.\n", reg.Namespace, reg.Name, u.Host)
	fmt.Fprintf(&b, "server = %q\n\n", strings.TrimSuffix(server, "/"))
	fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", mirrorURL)
	if reg.Spec.TLS != nil {
		fmt.Fprintf(&b, "  # The CA that signed secret %s, copied to the node:\n  ca = %q\n", reg.Spec.TLS.SecretName,
			path.Join(certsDir, u.Host, "stevedore-ca.crt"))
	}
	return b.String()
}
