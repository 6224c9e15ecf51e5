package controllers

import (
	"context"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// Garbage collection runs as a CronJob the Registry owns (docs/gc.md):
// `registryd gc` in registryd's own image, with its ServiceAccount,
// storage credentials and volumes, so the operator never touches a user's
// bucket with its own identity. Each run's summary is its Job's log.

// gcJobHistory is how many finished Jobs (and their logs) stay.
const gcJobHistory = 3

// reconcileGC keeps the CronJob in step with spec.gc: there while a
// schedule is set, gone otherwise.
func (r *RegistryReconciler) reconcileGC(ctx context.Context, s *registryScope) error {
	gc := s.reg.Spec.GC
	if gc == nil || gc.Schedule == "" {
		return r.deleteOwned(ctx, s.reg, &batchv1.CronJob{})
	}
	return r.apply(ctx, batchv1ac.CronJob(childName(s.reg), s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithSpec(batchv1ac.CronJobSpec().
			WithSchedule(gc.Schedule).
			// One collection at a time; registryd gc's bucket lock
			// also keeps out runs started by hand.
			WithConcurrencyPolicy(batchv1.ForbidConcurrent).
			WithSuccessfulJobsHistoryLimit(gcJobHistory).
			WithFailedJobsHistoryLimit(gcJobHistory).
			WithJobTemplate(batchv1ac.JobTemplateSpec().
				WithLabels(gcLabels(s.reg)).
				WithSpec(r.gcJobSpec(s.reg)))),
		&batchv1.CronJob{})
}

// gcJobSpec is a collection's Job, scheduled or asked for.
func (r *RegistryReconciler) gcJobSpec(reg *v1.Registry) *batchv1ac.JobSpecApplyConfiguration {
	pod := r.podTemplate(reg)
	container := r.gcContainer(reg)
	pod.Spec.Containers = nil
	pod.Spec.WithContainers(container).
		WithRestartPolicy(corev1.RestartPolicyNever).
		WithTerminationGracePeriodSeconds(terminationGracePeriod)
	pod.Spec.TopologySpreadConstraints = nil
	// Not registryd's selector labels: the Service, the PodDisruptionBudget
	// and the Deployment must not count a collector's pod.
	pod.Labels = gcLabels(reg)
	if storageClaimName(reg) != "" && !sharedVolume(reg) {
		// A ReadWriteOnce claim mounts on one node only: run where
		// registryd runs.
		if pod.Spec.Affinity == nil {
			pod.Spec.Affinity = corev1ac.Affinity()
		}
		pod.Spec.Affinity.WithPodAffinity(corev1ac.PodAffinity().
			WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.PodAffinityTerm().
				WithTopologyKey(corev1.LabelHostname).
				WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(reg)))))
	}
	return batchv1ac.JobSpec().WithBackoffLimit(1).WithTemplate(pod)
}

// gcLabels mark the collector's Jobs and pods.
func gcLabels(reg *v1.Registry) map[string]string {
	l := childLabels(reg)
	l[labelName] = "registryd-gc"
	return l
}

// gcContainer is registryd's container running `registryd gc` instead of
// serving: same image, credentials, mounts and security context; no ports
// or probes.
func (r *RegistryReconciler) gcContainer(reg *v1.Registry) *corev1ac.ContainerApplyConfiguration {
	c := r.registrydContainer(reg)
	c.WithName("gc")
	c.Args = GCArgs(reg)
	c.Ports, c.StartupProbe, c.ReadinessProbe, c.LivenessProbe = nil, nil, nil, nil
	// The report goes where the kubelet keeps a container's termination
	// message, for reconcileGCStatus to read.
	c.WithTerminationMessagePath(corev1.TerminationMessagePathDefault).
		WithTerminationMessagePolicy(corev1.TerminationMessageReadFile)
	return c
}

// GCArgs are the arguments of `registryd gc` for this Registry; registryd's
// tests parse them with its own flag set.
func GCArgs(reg *v1.Registry) []string {
	args := []string{"gc",
		"--registry=" + reg.Name,
		"--namespace=" + reg.Namespace,
		"--storage=" + reg.Spec.Storage.URL,
		"--log-format=json",
		"--report-file=" + corev1.TerminationMessagePathDefault,
	}
	if reg.Spec.Storage.Prefix != "" {
		args = append(args, "--storage-prefix="+reg.Spec.Storage.Prefix)
	}
	if gc := reg.Spec.GC; gc != nil {
		// An explicit 0s means no grace, as `registryd gc --grace=0` does;
		// unset keeps the CRD's default.
		if gc.GracePeriod != nil {
			args = append(args, "--grace="+gc.GracePeriod.Duration.String())
		}
		if gc.DeleteUntagged {
			args = append(args, "--delete-untagged")
		}
		if gc.UntaggedDelay != nil {
			args = append(args, "--untagged-delay="+gc.UntaggedDelay.Duration.String())
		}
		if gc.DryRun {
			args = append(args, "--dry-run")
		}
	}
	return args
}
