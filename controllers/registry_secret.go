package controllers

import (
	"context"
	"crypto/rand"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// reconcileHTTPSecret creates the secret that signs upload tokens, once.
// It is never applied or rewritten: a new value would break every upload in
// flight, so an existing Secret is kept as it is, whatever it holds.
func (r *RegistryReconciler) reconcileHTTPSecret(ctx context.Context, s *registryScope) error {
	key := client.ObjectKey{Namespace: s.reg.Namespace, Name: httpSecretName(s.reg)}
	var existing corev1.Secret
	err := r.APIReader.Get(ctx, key, &existing)
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading Secret %s: %w", key.Name, err)
	}
	// Text, not raw bytes: registryd reads the file as text.
	value := []byte(rand.Text() + rand.Text())
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace, Labels: childLabels(s.reg)},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{httpSecretKey: value},
	}
	if err := controllerutil.SetControllerReference(s.reg, secret, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Secret %s: %w", key.Name, err)
	}
	r.Recorder.Eventf(s.reg, secret, corev1.EventTypeNormal, "HTTPSecretCreated", "Create",
		"created Secret %s that signs upload state across replicas", key.Name)
	return nil
}
