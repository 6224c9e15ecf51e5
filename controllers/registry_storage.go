package controllers

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"gocloud.dev/blob"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/bucket"
)

const (
	probeTimeout = 15 * time.Second
	// Defaults of Options.ProbeInterval and Options.ProbeRetryInterval.
	defaultProbeInterval      = 5 * time.Minute
	defaultProbeRetryInterval = 30 * time.Second
)

// StorageProber checks that a Registry's bucket can be written, read and
// deleted, opened with opts (the credentials of its secretRef, isolated).
type StorageProber func(ctx context.Context, storage v1.StorageSpec, opts bucket.Options) error

// ProbeBucket is the default StorageProber: a real round trip through gocloud.
func ProbeBucket(ctx context.Context, storage v1.StorageSpec, opts bucket.Options) error {
	b, err := bucket.Open(ctx, storage.URL, opts)
	if err != nil {
		return err
	}
	defer b.Close()
	return bucket.Probe(ctx, b)
}

// bucketOptions open a Registry's bucket for the operator: with the
// credentials of its secretRef and nothing else (never the operator's own
// environment or cloud identity), and connecting only where the endpoint
// policy allows.
func (o Options) bucketOptions(reg *v1.Registry, env map[string]string) bucket.Options {
	return bucket.Options{
		Prefix: reg.Spec.Storage.Prefix, Env: env, Isolated: true,
		DialControl: bucket.DialPolicy{Allowed: o.StorageAllowedNetworks}.Control,
	}
}

// usesPodIdentity: a cloud bucket without storage.secretRef is reached with
// registryd's own identity (its ServiceAccount: IRSA, workload identity),
// which the operator does not have and must not stand in for with its own.
func usesPodIdentity(reg *v1.Registry) bool {
	if reg.Spec.Storage.SecretRef != nil {
		return false
	}
	u, err := url.Parse(reg.Spec.Storage.URL)
	return err == nil && (u.Scheme == "s3" || u.Scheme == "gs" || u.Scheme == "azblob")
}

// reconcileStorage sets StorageReady from a probe of the bucket. Probes are
// spaced out by status.storage.lastProbeTime, whatever makes the Registry
// reconcile (a Deployment status change, a Repository created, a restart):
// the next one comes after the probe interval, at once on a spec change.
func (r *RegistryReconciler) reconcileStorage(ctx context.Context, s *registryScope) error {
	gen := s.reg.Generation
	if r.storageOutOfReach(s.reg) {
		// A file:// bucket is a volume inside registryd's pod, out of the
		// operator's reach; registryd's readiness probe covers it.
		setCondition(&s.status.Conditions, gen, v1.ConditionStorageReady, metav1.ConditionTrue, ReasonStorageInPod,
			"file:// storage is a volume of the registryd pod; its readiness probe checks it")
		return nil
	}
	if usesPodIdentity(s.reg) {
		setCondition(&s.status.Conditions, gen, v1.ConditionStorageReady, metav1.ConditionTrue, ReasonStorageProbedByPods,
			"no storage.secretRef: registryd reaches the bucket with its pod's identity (spec.serviceAccount.annotations), "+
				"which the operator does not lend or borrow; registryd's readiness probe checks the bucket")
		return nil
	}
	if wait := r.untilNextProbe(s, time.Now()); wait > 0 {
		s.requeue(wait)
		return nil
	}
	if s.status.Storage == nil {
		s.status.Storage = &v1.StorageStatus{}
	}
	s.status.Storage.LastProbeTime = ptr.To(metav1.Now())
	env, err := r.credentials.read(ctx, r.APIReader, s.reg)
	if err != nil {
		setCondition(&s.status.Conditions, gen, v1.ConditionStorageReady, metav1.ConditionFalse, ReasonCredentialsMissing, err.Error())
		s.requeue(r.probeRetryInterval())
		return nil
	}
	probe := r.ProbeStorage
	if probe == nil {
		probe = ProbeBucket
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if err := probe(pctx, s.reg.Spec.Storage, r.bucketOptions(s.reg, env)); err != nil {
		if isConditionTrue(s.status.Conditions, v1.ConditionStorageReady) || len(s.status.Conditions) == 0 {
			r.Recorder.Eventf(s.reg, nil, corev1.EventTypeWarning, "StorageProbeFailed", "Probe", "storage probe failed: %v", err)
		}
		setCondition(&s.status.Conditions, gen, v1.ConditionStorageReady, metav1.ConditionFalse, ReasonStorageProbeFailed, err.Error())
		s.requeue(r.probeRetryInterval())
		return nil
	}
	setCondition(&s.status.Conditions, gen, v1.ConditionStorageReady, metav1.ConditionTrue, ReasonStorageProbeSucceeded,
		"wrote, read and deleted a probe object")
	s.requeue(r.probeInterval())
	return nil
}

// untilNextProbe is how long the last probe's verdict still stands: 0 when
// there is none, or it was made for an older generation of the spec.
func (r *RegistryReconciler) untilNextProbe(s *registryScope, now time.Time) time.Duration {
	c := meta.FindStatusCondition(s.status.Conditions, v1.ConditionStorageReady)
	st := s.status.Storage
	if c == nil || c.ObservedGeneration != s.reg.Generation || c.Reason == ReasonStorageInPod || c.Reason == ReasonStorageProbedByPods ||
		st == nil || st.LastProbeTime == nil {
		return 0
	}
	every := r.probeInterval()
	if c.Status != metav1.ConditionTrue {
		every = r.probeRetryInterval()
	}
	return st.LastProbeTime.Add(every).Sub(now)
}

func (o Options) probeInterval() time.Duration {
	if o.ProbeInterval > 0 {
		return o.ProbeInterval
	}
	return defaultProbeInterval
}

func (o Options) probeRetryInterval() time.Duration {
	if o.ProbeRetryInterval > 0 {
		return o.ProbeRetryInterval
	}
	return defaultProbeRetryInterval
}

// storageOutOfReach: a file:// bucket is a volume inside registryd's pod,
// which the operator can neither probe nor change, unless it shares the
// filesystem (make dev, tests).
func (o Options) storageOutOfReach(reg *v1.Registry) bool {
	return fileStorageDir(reg) != "" && !o.LocalStorageReachable
}

// openStorage opens a Registry's bucket with env, the keys of its
// secretRef; bucket.ErrNoCredentials when it has none.
func (o Options) openStorage(ctx context.Context, reg *v1.Registry, env map[string]string) (*blob.Bucket, error) {
	if usesPodIdentity(reg) {
		return nil, fmt.Errorf("%w: storage.secretRef is not set, and the operator does not use its own identity", bucket.ErrNoCredentials)
	}
	return bucket.Open(ctx, reg.Spec.Storage.URL, o.bucketOptions(reg, env))
}
