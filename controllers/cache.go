package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions keep the operator's informers to what it made: every child
// kind is watched through a label selector (app.kubernetes.io/managed-by:
// stevedore-operator), so a cluster's own Deployments, Services, RBAC and
// claims are never listed into memory, and managed fields are dropped.
// Secrets are not cached at all (ClientOptions): the operator reads the
// few it needs (storage credentials, htpasswd, its HTTP secret) directly,
// so it needs no list/watch on Secrets.
func CacheOptions() cache.Options {
	mine := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{labelManagedBy: fieldManager})}
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.Deployment{}:            mine,
			&corev1.Service{}:               mine,
			&corev1.ServiceAccount{}:        mine,
			&corev1.PersistentVolumeClaim{}: mine,
			&rbacv1.Role{}:                  mine,
			&rbacv1.RoleBinding{}:           mine,
			&rbacv1.ClusterRoleBinding{}:    mine,
			&networkingv1.Ingress{}:         mine,
			&policyv1.PodDisruptionBudget{}: mine,
			&batchv1.CronJob{}:              mine,
			&batchv1.Job{}:                  mine,
		},
	}
}

// ClientOptions make every read of a Secret go to the API server, so none
// starts a cluster-wide Secret informer by accident.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}}
}
