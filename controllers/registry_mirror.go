package controllers

import (
	"encoding/json"
	"path"
	"strconv"

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
