package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// Reasons of the conditions the reconcilers set, and of their Events.
const (
	ReasonStorageProbeSucceeded = "ProbeSucceeded"
	ReasonStorageProbeFailed    = "ProbeFailed"
	ReasonStorageInPod          = "StorageInPod"
	ReasonStorageProbedByPods   = "ProbedByPods"
	ReasonCredentialsMissing    = "CredentialsMissing"

	ReasonDeploymentAvailable   = "DeploymentAvailable"
	ReasonDeploymentUnavailable = "DeploymentUnavailable"
	ReasonRollingOut            = "RollingOut"
	ReasonRolloutComplete       = "RolloutComplete"
	ReasonRolloutStuck          = "RolloutStuck"
	ReasonScaledToZero          = "ScaledToZero"

	ReasonReconcileFailed = "ReconcileFailed"
	ReasonAsExpected      = "AsExpected"
	ReasonReady           = v1.ReasonReady
	ReasonNotReady        = "NotReady"
	ReasonAuthDisabled    = "AuthDisabled"

	ReasonHtpasswdSecretFound   = "HtpasswdSecretFound"
	ReasonHtpasswdSecretMissing = "HtpasswdSecretMissing"
	ReasonHtpasswdSecretInvalid = "HtpasswdSecretInvalid"

	ReasonRegistryFound       = v1.ReasonRegistryFound
	ReasonRegistryNotFound    = "RegistryNotFound"
	ReasonNameConflict        = "NameConflict"
	ReasonNameUnique          = v1.ReasonNameUnique
	ReasonBucketCleanupFailed = "BucketCleanupFailed"
)

// Condition types of the Repository, besides Ready.
const (
	ConditionRegistryFound = v1.ConditionRegistryFound
	ConditionConflict      = v1.ConditionConflict
	// ConditionAuthDisabled is set on a Registry whose auth mode is none, so
	// nobody runs an open registry by accident.
	ConditionAuthDisabled = "AuthDisabled"
	// ConditionAuthReady is set in htpasswd mode: the Secret of users exists
	// and holds bcrypt entries.
	ConditionAuthReady = "AuthReady"
)

// setCondition records a condition with the object's current generation.
func setCondition(conds *[]metav1.Condition, generation int64, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(conds, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: generation,
	})
}

func boolStatus(b bool) metav1.ConditionStatus {
	if b {
		return metav1.ConditionTrue
	}
	return metav1.ConditionFalse
}
