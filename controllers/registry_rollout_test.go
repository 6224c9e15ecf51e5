package controllers_test

import (
	"context"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestRegistrydPodSettings: registryd's pods are production-ready: probes
// that tolerate a storage blip, a startup probe, requests (not BestEffort),
// a grace period covering registryd's drain, no fixed UID, and a rollout
// that leaves a replica away without the Registry going unready.
func TestRegistrydPodSettings(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "pods", func(r *v1.Registry) {
		r.Spec.Storage.URL = "s3://pods"
		r.Spec.Replicas = ptr.To[int32](3)
	})
	eventually(t, "pod settings", func() error {
		var d appsv1.Deployment
		if err := get(&d, ns, "pods-registry"); err != nil {
			return err
		}
		pod, c := d.Spec.Template.Spec, registrydContainer(&d)
		switch {
		case c.ReadinessProbe == nil || c.ReadinessProbe.PeriodSeconds < 10 || c.ReadinessProbe.TimeoutSeconds < 5 || c.ReadinessProbe.FailureThreshold < 3:
			return fmt.Errorf("readiness probe %+v lists the bucket too often or gives up too soon", c.ReadinessProbe)
		case c.StartupProbe == nil:
			return fmt.Errorf("no startup probe")
		case c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero():
			return fmt.Errorf("resources %+v: BestEffort", c.Resources)
		case ptr.Deref(pod.TerminationGracePeriodSeconds, 30) < 35:
			return fmt.Errorf("terminationGracePeriodSeconds %d < registryd's 5s delay + 25s drain", ptr.Deref(pod.TerminationGracePeriodSeconds, 30))
		case pod.SecurityContext == nil || pod.SecurityContext.RunAsUser != nil:
			return fmt.Errorf("pod security context %+v fixes a UID", pod.SecurityContext)
		case d.Spec.Strategy.RollingUpdate == nil || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 1:
			return fmt.Errorf("strategy %+v: with 3 replicas one may be away", d.Spec.Strategy)
		}
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.StartupProbe, c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil {
				return fmt.Errorf("probe %+v", p)
			}
		}
		return nil
	})
}

// TestReadyWaitsForRollout: Ready stays False while a rollout is under way
// (kubectl wait must not return before the new settings serve), and the
// kstatus conditions say Reconciling, then neither.
func TestReadyWaitsForRollout(t *testing.T) {
	ns := newNamespace(t)
	createRegistry(t, ns, "roll", nil)
	conds := func(ready, reconciling metav1.ConditionStatus) func() error {
		return func() error {
			var reg v1.Registry
			if err := get(&reg, ns, "roll"); err != nil {
				return err
			}
			r := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionReady)
			rc := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionReconciling)
			st := meta.FindStatusCondition(reg.Status.Conditions, v1.ConditionStalled)
			if r == nil || rc == nil || st == nil || r.Status != ready || rc.Status != reconciling || st.Status != metav1.ConditionFalse {
				return fmt.Errorf("Ready %+v, Reconciling %+v, Stalled %+v; want %s, %s, False", r, rc, st, ready, reconciling)
			}
			return nil
		}
	}
	setDeploymentProgress(t, ns, "roll-registry", "ReplicaSetUpdated")
	eventually(t, "not ready while rolling out", conds(metav1.ConditionFalse, metav1.ConditionTrue))
	setDeploymentProgress(t, ns, "roll-registry", "NewReplicaSetAvailable")
	eventually(t, "ready once rolled out", conds(metav1.ConditionTrue, metav1.ConditionFalse))
}

// setDeploymentProgress plays the Deployment controller: one replica
// available, the rollout at the given Progressing reason.
func setDeploymentProgress(t *testing.T, ns, name, reason string) {
	t.Helper()
	eventually(t, "deployment status", func() error {
		var d appsv1.Deployment
		if err := get(&d, ns, name); err != nil {
			return err
		}
		now := metav1.Now()
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: reason, LastUpdateTime: now, LastTransitionTime: now},
			},
		}
		return env.Client.Status().Update(context.Background(), &d)
	})
}

// TestServiceAccountAnnotations: spec.serviceAccount.annotations reach
// registryd's ServiceAccount, where IRSA and workload identity read them.
func TestServiceAccountAnnotations(t *testing.T) {
	ns := newNamespace(t)
	const key, value = "eks.amazonaws.com/role-arn", "arn:aws:iam::123456789012:role/registry"
	createRegistry(t, ns, "sa", func(r *v1.Registry) {
		r.Spec.Storage.URL = "s3://sa"
		r.Spec.ServiceAccount = &v1.ServiceAccountSpec{Annotations: map[string]string{key: value}}
	})
	eventually(t, "ServiceAccount annotations", func() error {
		var sa corev1.ServiceAccount
		if err := get(&sa, ns, "sa-registry"); err != nil {
			return err
		}
		if got := sa.Annotations[key]; got != value {
			return fmt.Errorf("annotation %s = %q, want %q", key, got, value)
		}
		return nil
	})
}
