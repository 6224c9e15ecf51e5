package controllers_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestRegistryPodKnobs sets every pod, Service and Ingress setting a user
// may give registryd and finds each where it belongs.
func TestRegistryPodKnobs(t *testing.T) {
	ns := newNamespace(t)
	tsc := corev1.TopologySpreadConstraint{MaxSkew: 2, TopologyKey: corev1.LabelTopologyZone,
		WhenUnsatisfiable: corev1.DoNotSchedule}
	psc := &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(1000650000))}
	csc := &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	createRegistry(t, ns, "main", func(r *v1.Registry) {
		r.Spec.Replicas = ptr.To(int32(1))
		r.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "pull"}}
		r.Spec.ImagePullPolicy = corev1.PullAlways
		r.Spec.PodLabels = map[string]string{"team": "platform", "app.kubernetes.io/instance": "not-the-selector"}
		r.Spec.PodAnnotations = map[string]string{"prometheus.io/scrape": "true"}
		r.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{tsc}
		r.Spec.PriorityClassName = "registry-critical"
		r.Spec.Env = []corev1.EnvVar{{Name: "GOMEMLIMIT", Value: "900MiB"}}
		r.Spec.PodSecurityContext = psc
		r.Spec.SecurityContext = csc
		r.Spec.Service.Annotations = map[string]string{"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
		r.Spec.Ingress = &v1.IngressSpec{Host: "registry.example.com", Annotations: map[string]string{
			"cert-manager.io/cluster-issuer": "letsencrypt", "nginx.ingress.kubernetes.io/proxy-body-size": "10g"}}
	})
	var d appsv1.Deployment
	eventually(t, "Deployment", func() error { return get(&d, ns, "main-registry") })
	pod := d.Spec.Template
	c := registrydContainer(&d)
	var svc corev1.Service
	var in networkingv1.Ingress
	eventually(t, "Service and Ingress", func() error {
		if err := get(&svc, ns, "main-registry"); err != nil {
			return err
		}
		return get(&in, ns, "main-registry")
	})
	for _, tc := range []struct {
		field     string
		got, want any
	}{
		{"imagePullSecrets", pod.Spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "pull"}}},
		{"imagePullPolicy", c.ImagePullPolicy, corev1.PullAlways},
		{"podLabels", pod.Labels["team"], "platform"},
		{"podLabels cannot take the selector's", pod.Labels["app.kubernetes.io/instance"], "main"},
		{"podAnnotations", pod.Annotations["prometheus.io/scrape"], "true"},
		{"topologySpreadConstraints", pod.Spec.TopologySpreadConstraints, []corev1.TopologySpreadConstraint{tsc}},
		{"priorityClassName", pod.Spec.PriorityClassName, "registry-critical"},
		{"env", slices.Contains(c.Env, corev1.EnvVar{Name: "GOMEMLIMIT", Value: "900MiB"}), true},
		{"podSecurityContext", pod.Spec.SecurityContext, psc},
		{"securityContext", c.SecurityContext, csc},
		{"service.annotations", svc.Annotations["service.beta.kubernetes.io/aws-load-balancer-internal"], "true"},
		{"ingress.annotations", in.Annotations["cert-manager.io/cluster-issuer"], "letsencrypt"},
		{"ingress.annotations over the operator's", in.Annotations["nginx.ingress.kubernetes.io/proxy-body-size"], "10g"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("%s: got %+v, want %+v", tc.field, tc.got, tc.want)
			}
		})
	}
}

// TestRegistryScaleSubresource: an HorizontalPodAutoscaler (or kubectl
// scale) sets replicas through the scale subresource, and reads the pods it
// selects there; the Deployment follows.
func TestRegistryScaleSubresource(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	reg := createRegistry(t, ns, "main", nil)
	scale := &autoscalingv1.Scale{}
	eventually(t, "scale selector", func() error {
		if err := env.Client.SubResource("scale").Get(ctx, reg, scale); err != nil {
			return err
		}
		if scale.Status.Selector == "" {
			return fmt.Errorf("no selector in %+v", scale.Status)
		}
		return nil
	})
	sel, err := labels.Parse(scale.Status.Selector)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := get(&d, ns, "main-registry"); err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("scale selector %s does not select registryd's pods %v", sel, d.Spec.Template.Labels)
	}
	// The Registry's own rules hold: mem:// is one pod's store.
	scale.Spec.Replicas = 3
	if err := env.Client.SubResource("scale").Update(ctx, reg, client.WithSubResourceBody(scale)); err == nil ||
		!strings.Contains(err.Error(), "mem:// storage") {
		t.Errorf("scaling a mem:// Registry to 3: %v, want the CEL rule's refusal", err)
	}
	eventually(t, "scale to 0", func() error {
		if err := env.Client.SubResource("scale").Get(ctx, reg, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = 0
		return env.Client.SubResource("scale").Update(ctx, reg, client.WithSubResourceBody(scale))
	})
	eventually(t, "Deployment scaled", func() error {
		if err := get(&d, ns, "main-registry"); err != nil {
			return err
		}
		if r := ptr.Deref(d.Spec.Replicas, -1); r != 0 {
			return fmt.Errorf("replicas %d", r)
		}
		return nil
	})
}

// TestIngressSpeaksHTTPSToATLSRegistry: with spec.tls registryd serves only
// HTTPS, so the Ingress must tell the controller to speak HTTPS to it
// (ingress-nginx otherwise sends plain HTTP and every request fails); without
// spec.tls it must not.
func TestIngressSpeaksHTTPSToATLSRegistry(t *testing.T) {
	ns := newNamespace(t)
	const key = "nginx.ingress.kubernetes.io/backend-protocol"
	for _, tc := range []struct {
		name string
		tls  bool
		want string
	}{{"tls", true, "HTTPS"}, {"plain", false, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			createRegistry(t, ns, tc.name, func(r *v1.Registry) {
				r.Spec.Ingress = &v1.IngressSpec{Host: tc.name + ".example.com"}
				if tc.tls {
					r.Spec.TLS = &v1.TLSSpec{SecretName: "serving"}
				}
			})
			var in networkingv1.Ingress
			eventually(t, "Ingress", func() error { return get(&in, ns, tc.name+"-registry") })
			if got := in.Annotations[key]; got != tc.want {
				t.Errorf("%s = %q, want %q", key, got, tc.want)
			}
		})
	}
}
