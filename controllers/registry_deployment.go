package controllers

import (
	"context"
	"maps"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// Paths inside registryd's container.
const (
	httpSecretDir = "/etc/stevedore/http-secret"
	tlsDir        = "/etc/stevedore/tls"
	htpasswdDir   = "/etc/stevedore/htpasswd"
	registrydPath = "/registryd"
	// Keys of the htpasswd Secret.
	htpasswdKey         = "htpasswd"
	htpasswdReadOnlyKey = "readonly"
	// fileTempDir, inside a file:// bucket's directory, holds temp files.
	fileTempDir = "_stevedore/tmp"
)

func (r *RegistryReconciler) reconcileDeployment(ctx context.Context, s *registryScope) error {
	ac := appsv1ac.Deployment(childName(s.reg), s.reg.Namespace).
		WithLabels(childLabels(s.reg)).
		WithOwnerReferences(ownerRef(s.reg)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(replicas(s.reg)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(s.reg))).
			WithStrategy(strategy(s.reg)).
			WithTemplate(r.podTemplate(s.reg)))
	// Either the apply response or the cached object: both carry the
	// Deployment's status for summarize.
	s.deploy = &appsv1.Deployment{}
	return r.apply(ctx, ac, s.deploy)
}

// strategy rolls registryd out. A file:// volume that one pod mounts at a
// time (ReadWriteOnce) cannot be handed from an old pod to a new one while
// both run, so those Deployments are recreated.
func strategy(reg *v1.Registry) *appsv1ac.DeploymentStrategyApplyConfiguration {
	if storageClaimName(reg) != "" && !sharedVolume(reg) {
		return appsv1ac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType)
	}
	// One replica is never taken down before its successor is ready. With
	// several, one may be away: the Deployment (and so the Registry) stays
	// Available while a node drain evicts a pod, instead of flapping.
	maxUnavailable := int32(0)
	if replicas(reg) > 1 {
		maxUnavailable = 1
	}
	return appsv1ac.DeploymentStrategy().
		WithType(appsv1.RollingUpdateDeploymentStrategyType).
		WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
			WithMaxUnavailable(intstr.FromInt32(maxUnavailable)).
			WithMaxSurge(intstr.FromInt32(1)))
}

func (r *RegistryReconciler) podTemplate(reg *v1.Registry) *corev1ac.PodTemplateSpecApplyConfiguration {
	spec := corev1ac.PodSpec().
		WithServiceAccountName(childName(reg)).
		// No fixed runAsUser: the image's USER applies, and OpenShift's
		// restricted SCC can assign a UID of its range.
		WithSecurityContext(podSecurityContext(reg)).
		WithPriorityClassName(reg.Spec.PriorityClassName).
		// registryd fails /readyz at once on SIGTERM, serves on for its
		// --shutdown-delay (5s) while endpoints drop it, then drains
		// in-flight requests for --shutdown-timeout (25s).
		WithTerminationGracePeriodSeconds(terminationGracePeriod).
		WithContainers(r.registrydContainer(reg)).
		WithVolumes(volumes(reg)...).
		WithNodeSelector(reg.Spec.NodeSelector)
	if len(reg.Spec.Tolerations) > 0 {
		var tols []*corev1ac.TolerationApplyConfiguration
		mustConvert(reg.Spec.Tolerations, &tols)
		spec.WithTolerations(tols...)
	}
	if reg.Spec.Affinity != nil {
		spec.Affinity = &corev1ac.AffinityApplyConfiguration{}
		mustConvert(reg.Spec.Affinity, spec.Affinity)
	}
	for _, ref := range reg.Spec.ImagePullSecrets {
		spec.WithImagePullSecrets(corev1ac.LocalObjectReference().WithName(ref.Name))
	}
	if len(reg.Spec.TopologySpreadConstraints) > 0 {
		var tscs []*corev1ac.TopologySpreadConstraintApplyConfiguration
		mustConvert(reg.Spec.TopologySpreadConstraints, &tscs)
		spec.WithTopologySpreadConstraints(tscs...)
	} else if replicas(reg) > 1 {
		// Spread replicas so one node going away leaves the registry up.
		spec.WithTopologySpreadConstraints(corev1ac.TopologySpreadConstraint().
			WithMaxSkew(1).
			WithTopologyKey(corev1.LabelHostname).
			WithWhenUnsatisfiable(corev1.ScheduleAnyway).
			WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(reg))))
	}
	// The user's labels first: the operator's select the pods and win.
	labels := map[string]string{}
	maps.Copy(labels, reg.Spec.PodLabels)
	maps.Copy(labels, childLabels(reg))
	tmpl := corev1ac.PodTemplateSpec().
		WithLabels(labels).
		WithSpec(spec)
	if len(reg.Spec.PodAnnotations) > 0 {
		tmpl.WithAnnotations(reg.Spec.PodAnnotations)
	}
	return tmpl
}

func (r *RegistryReconciler) registrydContainer(reg *v1.Registry) *corev1ac.ContainerApplyConfiguration {
	image := reg.Spec.Image
	if image == "" {
		image = r.RegistrydImage
	}
	c := corev1ac.Container().
		WithName("registryd").
		WithImage(image).
		WithCommand(registrydPath).
		WithArgs(RegistrydArgs(reg)...).
		WithPorts(
			corev1ac.ContainerPort().WithName("http").WithContainerPort(httpPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("debug").WithContainerPort(debugPort).WithProtocol(corev1.ProtocolTCP)).
		// /readyz lists the bucket: every 10s with 5s to answer, and three
		// misses before the pod leaves the Service, so a storage blip does
		// not empty it. The startup probe holds readiness and liveness off
		// until the first success, so a starting pod logs no failures.
		WithStartupProbe(httpProbe("/readyz", 2, 2, 90)).
		WithReadinessProbe(httpProbe("/readyz", 10, 5, 3)).
		WithLivenessProbe(httpProbe("/healthz", 10, 5, 6)).
		WithSecurityContext(containerSecurityContext(reg)).
		WithVolumeMounts(volumeMounts(reg)...)
	if p := reg.Spec.ImagePullPolicy; p != "" {
		c.WithImagePullPolicy(p)
	}
	c.Resources = &corev1ac.ResourceRequirementsApplyConfiguration{}
	mustConvert(resources(reg), c.Resources)
	if ref := reg.Spec.Storage.SecretRef; ref != nil {
		c.WithEnvFrom(corev1ac.EnvFromSource().WithSecretRef(corev1ac.SecretEnvSource().WithName(ref.Name)))
	}
	if dir := fileStorageDir(reg); dir != "" {
		// fileblob writes a temp file and renames it into place; a rename
		// from /tmp (another volume) fails with EXDEV, so temp files live on
		// the storage volume, under registryd's reserved prefix.
		c.WithEnv(corev1ac.EnvVar().WithName("TMPDIR").WithValue(path.Join(dir, fileTempDir)))
	}
	for _, e := range reg.Spec.Env {
		if slices.ContainsFunc(c.Env, func(own corev1ac.EnvVarApplyConfiguration) bool { return ptrString(own.Name) == e.Name }) {
			continue // the operator's own
		}
		var ac corev1ac.EnvVarApplyConfiguration
		mustConvert(e, &ac)
		c.WithEnv(&ac)
	}
	return c
}

// containerSecurityContext is spec.securityContext, or the restricted Pod
// Security profile's settings with a read-only root filesystem.
func containerSecurityContext(reg *v1.Registry) *corev1ac.SecurityContextApplyConfiguration {
	if sc := reg.Spec.SecurityContext; sc != nil {
		ac := &corev1ac.SecurityContextApplyConfiguration{}
		mustConvert(sc, ac)
		return ac
	}
	return corev1ac.SecurityContext().
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(true).
		WithRunAsNonRoot(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))
}

// RegistrydArgs are registryd's flags for this Registry; registryd's tests
// parse them with its own flag set so the two cannot drift apart.
func RegistrydArgs(reg *v1.Registry) []string {
	args := []string{
		"--registry=" + reg.Name,
		"--namespace=" + reg.Namespace,
		"--addr=:" + strconv.Itoa(httpPort),
		"--debug-addr=:" + strconv.Itoa(debugPort),
		"--storage=" + reg.Spec.Storage.URL,
		"--http-secret-file=" + httpSecretDir + "/" + httpSecretKey,
		"--log-format=json",
		"--auth=" + string(authMode(reg)),
	}
	if reg.Spec.Auth.AnonymousPull {
		args = append(args, "--anonymous-pull")
	}
	args = append(args, authArgs(reg)...)
	if reg.Spec.Storage.Prefix != "" {
		args = append(args, "--storage-prefix="+reg.Spec.Storage.Prefix)
	}
	if n := reg.Spec.Limits.MaxManifestBytes; n > 0 {
		args = append(args, "--max-manifest-bytes="+strconv.FormatInt(n, 10))
	}
	if reg.Spec.TLS != nil {
		args = append(args, "--tls-cert-file="+tlsDir+"/tls.crt", "--tls-key-file="+tlsDir+"/tls.key")
	}
	if ttl := redirectTTL(reg); ttl > 0 {
		args = append(args, "--redirect-ttl="+ttl.String())
	}
	return append(args, mirrorArgs(reg)...)
}

// authMode is the Registry's auth mode; an object written before defaulting
// gets the CRD's default, kubernetes, never none.
func authMode(reg *v1.Registry) v1.AuthMode {
	if reg.Spec.Auth.Mode == "" {
		return v1.AuthKubernetes
	}
	return reg.Spec.Auth.Mode
}

// defaultRedirectTTL is how long a signed blob URL stays valid.
const defaultRedirectTTL = 20 * time.Minute

// redirectTTL is 0 when blob GETs are served by registryd itself. Redirects
// are on by default where the backend signs URLs (cloud buckets) and off for
// file:// and mem://.
func redirectTTL(reg *v1.Registry) time.Duration {
	rd := reg.Spec.Redirect
	enabled := false
	if u, err := url.Parse(reg.Spec.Storage.URL); err == nil {
		switch u.Scheme {
		case "s3", "gs", "azblob":
			enabled = true
		}
	}
	if rd != nil && rd.Enabled != nil {
		enabled = *rd.Enabled
	}
	if !enabled {
		return 0
	}
	if rd != nil && rd.TTL != nil && rd.TTL.Duration > 0 {
		return rd.TTL.Duration
	}
	return defaultRedirectTTL
}

func httpProbe(path string, period, timeout, failures int32) *corev1ac.ProbeApplyConfiguration {
	return corev1ac.Probe().
		WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString("debug"))).
		WithPeriodSeconds(period).
		WithTimeoutSeconds(timeout).
		WithFailureThreshold(failures)
}

// terminationGracePeriod covers registryd's shutdown delay (5s) and drain
// (25s), with room to spare.
const terminationGracePeriod = 40

// resources are spec.resources, or requests that keep registryd out of the
// BestEffort class (first evicted, no CPU share under load) and a memory
// limit well above what streaming blobs needs.
func resources(reg *v1.Registry) corev1.ResourceRequirements {
	if len(reg.Spec.Resources.Requests) > 0 || len(reg.Spec.Resources.Limits) > 0 {
		return reg.Spec.Resources
	}
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
	}
}

// podSecurityContext: non-root, with the image's user. fsGroup only where a
// volume must be writable by that user (a file:// claim).
func podSecurityContext(reg *v1.Registry) *corev1ac.PodSecurityContextApplyConfiguration {
	if psc := reg.Spec.PodSecurityContext; psc != nil {
		ac := &corev1ac.PodSecurityContextApplyConfiguration{}
		mustConvert(psc, ac)
		return ac
	}
	sc := corev1ac.PodSecurityContext().
		WithRunAsNonRoot(true).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
	if storageClaimName(reg) != "" {
		sc.WithFSGroup(65532)
	}
	return sc
}

func volumes(reg *v1.Registry) []*corev1ac.VolumeApplyConfiguration {
	vs := []*corev1ac.VolumeApplyConfiguration{
		corev1ac.Volume().WithName("http-secret").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(httpSecretName(reg))),
		corev1ac.Volume().WithName("tmp").WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
	}
	if reg.Spec.TLS != nil {
		vs = append(vs, corev1ac.Volume().WithName("tls").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(reg.Spec.TLS.SecretName)))
	}
	if claim := storageClaimName(reg); claim != "" {
		vs = append(vs, corev1ac.Volume().WithName("storage").
			WithPersistentVolumeClaim(corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(claim)))
	} else if fileStorageDir(reg) != "" {
		// Only a Registry stored before persistentVolumeClaim was required.
		vs = append(vs, corev1ac.Volume().WithName("storage").WithEmptyDir(corev1ac.EmptyDirVolumeSource()))
	}
	if ref := htpasswdSecret(reg); ref != "" {
		vs = append(vs, corev1ac.Volume().WithName("htpasswd").WithSecret(corev1ac.SecretVolumeSource().WithSecretName(ref)))
	}
	mvs, _ := mirrorVolumes(reg)
	return append(vs, mvs...)
}

func volumeMounts(reg *v1.Registry) []*corev1ac.VolumeMountApplyConfiguration {
	ms := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("http-secret").WithMountPath(httpSecretDir).WithReadOnly(true),
		corev1ac.VolumeMount().WithName("tmp").WithMountPath("/tmp"),
	}
	if reg.Spec.TLS != nil {
		ms = append(ms, corev1ac.VolumeMount().WithName("tls").WithMountPath(tlsDir).WithReadOnly(true))
	}
	if dir := fileStorageDir(reg); dir != "" {
		ms = append(ms, corev1ac.VolumeMount().WithName("storage").WithMountPath(dir))
	}
	if htpasswdSecret(reg) != "" {
		// The whole directory, never subPath: the kubelet then swaps in a
		// rotated Secret, and registryd re-reads it without a restart.
		ms = append(ms, corev1ac.VolumeMount().WithName("htpasswd").WithMountPath(htpasswdDir).WithReadOnly(true))
	}
	_, mms := mirrorVolumes(reg)
	return append(ms, mms...)
}

// htpasswdSecret is the Secret of htpasswd entries, in htpasswd mode.
func htpasswdSecret(reg *v1.Registry) string {
	if authMode(reg) != v1.AuthHtpasswd || reg.Spec.Auth.HtpasswdSecretRef == nil {
		return ""
	}
	return reg.Spec.Auth.HtpasswdSecretRef.Name
}

// authArgs are registryd's flags for the Registry's auth settings.
func authArgs(reg *v1.Registry) []string {
	var args []string
	if c := reg.Spec.Auth.Challenge; c != "" {
		args = append(args, "--auth-challenge="+c)
	}
	if htpasswdSecret(reg) != "" {
		args = append(args, "--htpasswd-file="+htpasswdDir+"/"+htpasswdKey,
			"--htpasswd-readonly-file="+htpasswdDir+"/"+htpasswdReadOnlyKey)
	}
	if a := reg.Spec.Auth.TokenAudiences; authMode(reg) == v1.AuthKubernetes && len(a) > 0 {
		args = append(args, "--token-audiences="+strings.Join(a, ","))
	}
	return args
}

// fileStorageDir is the directory of a file:// bucket, which needs a
// writable volume under the read-only root filesystem.
func fileStorageDir(reg *v1.Registry) string {
	u, err := url.Parse(reg.Spec.Storage.URL)
	if err != nil || u.Scheme != "file" {
		return ""
	}
	return u.Path
}
