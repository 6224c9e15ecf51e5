package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// indexRepositoryRegistry indexes Repositories by spec.registry.
const indexRepositoryRegistry = "spec.registry"

// summarize derives Available, Progressing, Degraded and Ready from the
// Deployment and the phases' outcome.
func (r *RegistryReconciler) summarize(s *registryScope, reconcileErr error) {
	gen, conds := s.reg.Generation, &s.status.Conditions
	d := s.deploy
	// The scale subresource's status: an HPA reads the pods it selects.
	s.status.Selector = metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: selectorLabels(s.reg)})
	if d != nil {
		s.status.ReadyReplicas = d.Status.ReadyReplicas
		s.status.Replicas = d.Status.Replicas
		setAvailable(conds, gen, d, replicas(s.reg))
		setProgressing(conds, gen, d)
	}

	switch {
	case reconcileErr != nil:
		setCondition(conds, gen, v1.ConditionDegraded, metav1.ConditionTrue, ReasonReconcileFailed, reconcileErr.Error())
	case d != nil && deploymentCondition(d, appsv1.DeploymentProgressing, corev1.ConditionFalse):
		setCondition(conds, gen, v1.ConditionDegraded, metav1.ConditionTrue, ReasonRolloutStuck, "the registryd rollout exceeded its progress deadline")
	default:
		setCondition(conds, gen, v1.ConditionDegraded, metav1.ConditionFalse, ReasonAsExpected, "")
	}

	if authMode(s.reg) == v1.AuthNone {
		setCondition(conds, gen, ConditionAuthDisabled, metav1.ConditionTrue, ReasonAuthDisabled,
			"auth.mode is none: anyone who can reach the registry can push and delete; use htpasswd or kubernetes outside development")
	} else {
		meta.RemoveStatusCondition(conds, ConditionAuthDisabled)
	}

	// Not Ready while a spec change still rolls out: `kubectl wait
	// --for=condition=Ready` must not return before the new settings serve.
	ready := isConditionTrue(*conds, v1.ConditionStorageReady) &&
		isConditionTrue(*conds, v1.ConditionAvailable) &&
		!isConditionTrue(*conds, v1.ConditionProgressing) &&
		!isConditionTrue(*conds, v1.ConditionDegraded) &&
		!isConditionFalse(*conds, ConditionAuthReady)
	reason, msg := ReasonReady, "registryd is available and its storage answers"
	if !ready {
		reason, msg = ReasonNotReady, notReadyMessage(*conds)
	}
	setCondition(conds, gen, v1.ConditionReady, boolStatus(ready), reason, msg)

	// The conditions above describe this generation, failed or not:
	// kstatus reads them only when observedGeneration is the generation,
	// so a spec change that fails must still be recorded as observed, or
	// it would show as InProgress for ever instead of Failed.
	s.status.ObservedGeneration = gen
	setKstatus(conds, gen)
}

// setKstatus sets Reconciling and Stalled, kstatus's abnormal-true
// conditions, from the others: Stalled while the Registry cannot become
// Ready without someone acting (stalledBy), Reconciling while not Ready for
// any other reason (a rollout in progress, pods starting, storage not yet
// probed).
func setKstatus(conds *[]metav1.Condition, gen int64) {
	ready := isConditionTrue(*conds, v1.ConditionReady)
	switch cause := stalledBy(*conds); {
	case cause != nil:
		setCondition(conds, gen, v1.ConditionStalled, metav1.ConditionTrue, cause.Reason, cause.Type+": "+cause.Message)
		setCondition(conds, gen, v1.ConditionReconciling, metav1.ConditionFalse, cause.Reason, "")
	case !ready:
		setCondition(conds, gen, v1.ConditionStalled, metav1.ConditionFalse, ReasonAsExpected, "")
		setCondition(conds, gen, v1.ConditionReconciling, metav1.ConditionTrue, ReasonNotReady, notReadyMessage(*conds))
	default:
		setCondition(conds, gen, v1.ConditionStalled, metav1.ConditionFalse, ReasonAsExpected, "")
		setCondition(conds, gen, v1.ConditionReconciling, metav1.ConditionFalse, ReasonReady, "")
	}
}

// stalledBy is the condition that stalls the Registry, nil when none does:
// Degraded (a failing phase, a rollout past its deadline), storage whose
// credentials are missing or whose probe fails, an htpasswd Secret missing
// or invalid. The operator keeps retrying each; Stalled goes False when one
// succeeds.
func stalledBy(conds []metav1.Condition) *metav1.Condition {
	if c := meta.FindStatusCondition(conds, v1.ConditionDegraded); c != nil && c.Status == metav1.ConditionTrue {
		return c
	}
	if c := meta.FindStatusCondition(conds, v1.ConditionStorageReady); c != nil && c.Status == metav1.ConditionFalse &&
		(c.Reason == ReasonCredentialsMissing || c.Reason == ReasonStorageProbeFailed) {
		return c
	}
	if c := meta.FindStatusCondition(conds, ConditionAuthReady); c != nil && c.Status == metav1.ConditionFalse {
		return c
	}
	return nil
}

func setAvailable(conds *[]metav1.Condition, gen int64, d *appsv1.Deployment, want int32) {
	switch {
	case want == 0:
		setCondition(conds, gen, v1.ConditionAvailable, metav1.ConditionFalse, ReasonScaledToZero, "spec.replicas is 0")
	case deploymentCondition(d, appsv1.DeploymentAvailable, corev1.ConditionTrue) && d.Status.AvailableReplicas > 0:
		setCondition(conds, gen, v1.ConditionAvailable, metav1.ConditionTrue, ReasonDeploymentAvailable,
			fmt.Sprintf("%d of %d replicas available", d.Status.AvailableReplicas, want))
	default:
		setCondition(conds, gen, v1.ConditionAvailable, metav1.ConditionFalse, ReasonDeploymentUnavailable,
			fmt.Sprintf("%d of %d replicas available", d.Status.AvailableReplicas, want))
	}
}

func setProgressing(conds *[]metav1.Condition, gen int64, d *appsv1.Deployment) {
	rolling := d.Status.ObservedGeneration < d.Generation ||
		(deploymentCondition(d, appsv1.DeploymentProgressing, corev1.ConditionTrue) && deploymentReason(d) != "NewReplicaSetAvailable")
	if rolling {
		setCondition(conds, gen, v1.ConditionProgressing, metav1.ConditionTrue, ReasonRollingOut,
			fmt.Sprintf("%d replicas updated, %d ready", d.Status.UpdatedReplicas, d.Status.ReadyReplicas))
		return
	}
	setCondition(conds, gen, v1.ConditionProgressing, metav1.ConditionFalse, ReasonRolloutComplete, "")
}

func deploymentCondition(d *appsv1.Deployment, typ appsv1.DeploymentConditionType, status corev1.ConditionStatus) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == typ {
			return c.Status == status
		}
	}
	return false
}

func deploymentReason(d *appsv1.Deployment) string {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing {
			return c.Reason
		}
	}
	return ""
}

func isConditionTrue(conds []metav1.Condition, typ string) bool {
	return meta.IsStatusConditionTrue(conds, typ)
}

func isConditionFalse(conds []metav1.Condition, typ string) bool {
	return meta.IsStatusConditionFalse(conds, typ)
}

// notReadyMessage names the conditions that keep the Registry from Ready.
func notReadyMessage(conds []metav1.Condition) string {
	msg := ""
	for _, typ := range []string{v1.ConditionStorageReady, v1.ConditionAvailable} {
		if c := meta.FindStatusCondition(conds, typ); c == nil || c.Status != metav1.ConditionTrue {
			msg += typ + " is not True; "
		}
	}
	if isConditionTrue(conds, v1.ConditionProgressing) {
		msg += "Progressing is True (a rollout is under way); "
	}
	if isConditionTrue(conds, v1.ConditionDegraded) {
		msg += "Degraded is True; "
	}
	if c := meta.FindStatusCondition(conds, ConditionAuthReady); c != nil && c.Status == metav1.ConditionFalse {
		msg += "AuthReady is False (" + c.Message + "); "
	}
	if len(msg) > 2 {
		msg = msg[:len(msg)-2]
	}
	return msg
}
