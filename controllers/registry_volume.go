package controllers

import (
	"context"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// defaultVolumeSize is the size of a claim the operator creates.
var defaultVolumeSize = resource.MustParse("10Gi")

// storageClaimName is the claim holding a file:// bucket, "" when there is
// none (mem://, cloud buckets, or a file:// Registry stored before
// persistentVolumeClaim was required, which keeps its emptyDir).
func storageClaimName(reg *v1.Registry) string {
	pvc := reg.Spec.Storage.PersistentVolumeClaim
	if fileStorageDir(reg) == "" || pvc == nil {
		return ""
	}
	if pvc.ClaimName != "" {
		return pvc.ClaimName
	}
	return childName(reg) + "-storage"
}

// sharedVolume: the file:// volume may be mounted by several pods at once
// (ReadWriteMany), so rollouts may overlap old and new pods.
func sharedVolume(reg *v1.Registry) bool {
	pvc := reg.Spec.Storage.PersistentVolumeClaim
	return pvc != nil && slices.Contains(pvc.AccessModes, corev1.ReadWriteMany)
}

// reconcileVolume creates the claim of a file:// bucket when the Registry
// does not name one. The claim has no owner reference: the blobs outlive the
// Registry, as a StatefulSet's volumes outlive it, until someone deletes
// the claim on purpose.
func (r *RegistryReconciler) reconcileVolume(ctx context.Context, s *registryScope) error {
	pvc := s.reg.Spec.Storage.PersistentVolumeClaim
	name := storageClaimName(s.reg)
	if name == "" || pvc.ClaimName != "" {
		return nil
	}
	size := defaultVolumeSize
	if pvc.Size != nil {
		size = *pvc.Size
	}
	modes := pvc.AccessModes
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	spec := corev1ac.PersistentVolumeClaimSpec().
		WithAccessModes(modes...).
		WithResources(corev1ac.VolumeResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceStorage: size}))
	if pvc.StorageClassName != nil {
		spec.WithStorageClassName(*pvc.StorageClassName)
	}
	return r.apply(ctx, corev1ac.PersistentVolumeClaim(name, s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithSpec(spec), &corev1.PersistentVolumeClaim{})
}
