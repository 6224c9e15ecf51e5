package controllers

import (
	"bytes"
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// reconcileAuthSecret checks, in htpasswd mode, that the Secret registryd
// mounts exists and holds bcrypt entries: without it registryd's pods
// would wait on the volume with nothing said on the Registry.
func (r *RegistryReconciler) reconcileAuthSecret(ctx context.Context, s *registryScope) error {
	gen, conds := s.reg.Generation, &s.status.Conditions
	name := htpasswdSecret(s.reg)
	if name == "" {
		meta.RemoveStatusCondition(conds, ConditionAuthReady)
		return nil
	}
	var secret corev1.Secret
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.reg.Namespace, Name: name}, &secret)
	entries := bcryptEntries(secret.Data[htpasswdKey])
	reason, msg := "", ""
	switch {
	case apierrors.IsNotFound(err):
		reason, msg = ReasonHtpasswdSecretMissing, fmt.Sprintf("Secret %s (auth.htpasswdSecretRef) does not exist", name)
	case err != nil:
		return fmt.Errorf("reading auth.htpasswdSecretRef %s: %w", name, err)
	case entries == 0:
		reason, msg = ReasonHtpasswdSecretInvalid, fmt.Sprintf("Secret %s has no bcrypt entries (user:$2y$…) under key %q", name, htpasswdKey)
	}
	if reason != "" {
		if !isConditionFalse(*conds, ConditionAuthReady) {
			r.Recorder.Eventf(s.reg, nil, corev1.EventTypeWarning, reason, "CheckAuth", "%s", msg)
		}
		setCondition(conds, gen, ConditionAuthReady, metav1.ConditionFalse, reason, msg)
		s.requeue(r.probeRetryInterval()) // Secrets are not watched: look again
		return nil
	}
	setCondition(conds, gen, ConditionAuthReady, metav1.ConditionTrue, ReasonHtpasswdSecretFound,
		fmt.Sprintf("Secret %s holds %d bcrypt entries", name, entries))
	return nil
}

// bcryptEntries counts user:bcrypt-hash lines; registryd skips the rest.
func bcryptEntries(data []byte) int {
	n := 0
	for _, line := range bytes.Split(data, []byte("\n")) {
		_, hash, ok := bytes.Cut(bytes.TrimSpace(line), []byte(":"))
		if ok && bytes.HasPrefix(hash, []byte("$2")) {
			n++
		}
	}
	return n
}
