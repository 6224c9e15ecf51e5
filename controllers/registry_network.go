package controllers

import (
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

func (r *RegistryReconciler) reconcileService(ctx context.Context, s *registryScope) error {
	svcType := s.reg.Spec.Service.Type
	if svcType == "" {
		svcType = "ClusterIP"
	}
	svc := corev1ac.Service(childName(s.reg), s.reg.Namespace)
	if a := s.reg.Spec.Service.Annotations; len(a) > 0 {
		svc.WithAnnotations(a)
	}
	applied := &corev1.Service{}
	err := r.apply(ctx, svc.
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(svcType).
			WithSelector(selectorLabels(s.reg)).
			WithPorts(corev1ac.ServicePort().WithName("http").WithPort(servicePort(s.reg)).WithTargetPort(intstr.FromString("http")))),
		applied)
	if err != nil {
		return err
	}
	s.status.Endpoint = fmt.Sprintf("%s.%s.svc:%d", childName(s.reg), s.reg.Namespace, servicePort(s.reg))
	s.status.Mirror = mirrorStatus(s.reg, applied)
	return nil
}

func (r *RegistryReconciler) reconcileIngress(ctx context.Context, s *registryScope) error {
	in := s.reg.Spec.Ingress
	if in == nil {
		return r.deleteOwned(ctx, s.reg, &networkingv1.Ingress{})
	}
	pathType := networkingv1.PathTypePrefix
	rule := networkingv1ac.IngressRule().WithHost(in.Host).WithHTTP(networkingv1ac.HTTPIngressRuleValue().
		WithPaths(networkingv1ac.HTTPIngressPath().WithPath("/").WithPathType(pathType).
			WithBackend(networkingv1ac.IngressBackend().WithService(networkingv1ac.IngressServiceBackend().
				WithName(childName(s.reg)).WithPort(networkingv1ac.ServiceBackendPort().WithName("http"))))))
	spec := networkingv1ac.IngressSpec().WithRules(rule)
	if in.ClassName != nil {
		spec.WithIngressClassName(*in.ClassName)
	}
	if in.TLSSecretName != "" {
		spec.WithTLS(networkingv1ac.IngressTLS().WithHosts(in.Host).WithSecretName(in.TLSSecretName))
	}
	return r.apply(ctx, networkingv1ac.Ingress(childName(s.reg), s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithAnnotations(ingressAnnotations(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithSpec(spec), &networkingv1.Ingress{})
}

// reconcilePDB keeps at most one replica away at a time, when there are
// several to spare.
func (r *RegistryReconciler) reconcilePDB(ctx context.Context, s *registryScope) error {
	if replicas(s.reg) <= 1 {
		return r.deleteOwned(ctx, s.reg, &policyv1.PodDisruptionBudget{})
	}
	return r.apply(ctx, policyv1ac.PodDisruptionBudget(childName(s.reg), s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(s.reg)))),
		&policyv1.PodDisruptionBudget{})
}

// deleteOwned deletes the Registry's child of obj's kind, if it exists and
// the Registry controls it.
func (r *RegistryReconciler) deleteOwned(ctx context.Context, reg *v1.Registry, obj client.Object) error {
	if err := r.Get(ctx, client.ObjectKey{Namespace: reg.Namespace, Name: childName(reg)}, obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !isOwnedBy(obj, reg) {
		return nil
	}
	if err := r.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting %T %s: %w", obj, obj.GetName(), err)
	}
	return nil
}

// ingressAnnotations lift the common ingress body-size limit (image layers
// are large) and, when registryd serves HTTPS itself (spec.tls), tell
// ingress-nginx to speak HTTPS to it; the user's spec.ingress.annotations
// win over both.
func ingressAnnotations(reg *v1.Registry) map[string]string {
	a := map[string]string{"nginx.ingress.kubernetes.io/proxy-body-size": "0"}
	if reg.Spec.TLS != nil {
		a["nginx.ingress.kubernetes.io/backend-protocol"] = "HTTPS"
	}
	maps.Copy(a, reg.Spec.Ingress.Annotations)
	return a
}
