package v1alpha1

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthMode selects how registryd authenticates clients.
// +kubebuilder:validation:Enum=none;htpasswd;kubernetes
type AuthMode string

const (
	// AuthNone leaves the registry open to everyone: development only.
	AuthNone AuthMode = "none"
	// AuthHtpasswd checks Basic credentials against bcrypt entries in a Secret.
	AuthHtpasswd AuthMode = "htpasswd"
	// AuthKubernetes checks Kubernetes tokens (TokenReview) and RBAC (SubjectAccessReview).
	AuthKubernetes AuthMode = "kubernetes"
)

// Condition types reported in RegistryStatus.Conditions.
const (
	ConditionReady        = "Ready"
	ConditionAvailable    = "Available"
	ConditionProgressing  = "Progressing"
	ConditionStorageReady = "StorageReady"
	ConditionDegraded     = "Degraded"
	// ConditionReconciling and ConditionStalled follow kstatus
	// (sigs.k8s.io/cli-utils): Reconciling True while the operator or the
	// rollout is still converging on the spec, Stalled True when it cannot
	// without someone's help.
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
)

// StorageSpec says where blobs and manifests live.
type StorageSpec struct {
	// URL is a gocloud.dev blob URL: s3://bucket?endpoint=…&region=…&use_path_style=true,
	// gs://bucket, azblob://container, file:///path or mem://.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self.matches('^(s3|gs|azblob|file|mem)://')",message="storage.url must start with one of s3://, gs://, azblob://, file://, mem://"
	URL string `json:"url"`

	// SecretRef names a Secret in the Registry's namespace whose keys are handed
	// to registryd as environment variables (AWS_*, AZURE_STORAGE_*, …). The
	// operator probes the bucket with these credentials and no others. Without
	// it, registryd reaches a cloud bucket with its pod's own identity
	// (spec.serviceAccount.annotations for IRSA or workload identity), and the
	// operator neither probes, imports from nor deletes in that bucket.
	// +optional
	SecretRef *corev1.LocalObjectReference `json:"secretRef,omitempty"`

	// Prefix is prepended to every object key, so several registries can share a bucket.
	// +optional
	// +kubebuilder:validation:Pattern=`^([A-Za-z0-9._-]+/)*$`
	Prefix string `json:"prefix,omitempty"`

	// PersistentVolumeClaim holds a file:// bucket, and is required for one:
	// it outlives pods, rollouts and operator upgrades.
	// +optional
	PersistentVolumeClaim *PersistentVolumeClaimSpec `json:"persistentVolumeClaim,omitempty"`
}

// PersistentVolumeClaimSpec is the volume of a file:// bucket: a claim the
// user names, or one the operator creates (<name>-registry-storage) and
// never deletes: it stays when the Registry goes, with the blobs in it.
type PersistentVolumeClaimSpec struct {
	// ClaimName names an existing claim in the Registry's namespace; the
	// operator then creates none.
	// +optional
	ClaimName string `json:"claimName,omitempty"`

	// Size of the claim the operator creates (default 10Gi); it can grow
	// where the StorageClass allows expansion.
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`

	// StorageClassName of the claim the operator creates; empty: the
	// cluster's default class.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`

	// AccessModes of the volume, ReadWriteOnce by default. Only a
	// ReadWriteMany volume may serve several replicas, and lets a rollout
	// start new pods before the old ones stop; otherwise the Deployment is
	// recreated (old pods stop before the new one mounts the volume).
	// +optional
	AccessModes []corev1.PersistentVolumeAccessMode `json:"accessModes,omitempty"`
}

// ServiceSpec shapes the Service in front of registryd.
type ServiceSpec struct {
	// +kubebuilder:default=ClusterIP
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +optional
	Type corev1.ServiceType `json:"type,omitempty"`

	// +kubebuilder:default=5000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
	// Annotations of the Service (cloud load-balancer settings, say).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// IngressSpec asks for an Ingress in front of the Service.
type IngressSpec struct {
	// +kubebuilder:validation:MinLength=1
	Host string `json:"host"`
	// +optional
	ClassName *string `json:"className,omitempty"`
	// +optional
	TLSSecretName string `json:"tlsSecretName,omitempty"`
	// Annotations of the Ingress, over the operator's own
	// (nginx.ingress.kubernetes.io/proxy-body-size: "0"), which they may
	// replace.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// TLSSpec makes registryd serve HTTPS itself.
type TLSSpec struct {
	// SecretName names a kubernetes.io/tls Secret.
	// +kubebuilder:validation:MinLength=1
	SecretName string `json:"secretName"`
}

// AuthSpec chooses who may pull, push and delete.
// +kubebuilder:validation:XValidation:rule="!has(self.mode) || self.mode != 'htpasswd' || has(self.htpasswdSecretRef)",message="auth.htpasswdSecretRef is required when auth.mode is htpasswd"
type AuthSpec struct {
	// Mode defaults to kubernetes: ServiceAccounts and RBAC are the users and
	// permissions. none is for development only.
	// +kubebuilder:default=kubernetes
	// +optional
	Mode AuthMode `json:"mode,omitempty"`

	// HtpasswdSecretRef names a Secret with an "htpasswd" key of bcrypt
	// entries (htpasswd -B) and, optionally, a "readonly" key listing users
	// (one per line) who may only pull. Changes reach running pods without a
	// restart.
	// +optional
	HtpasswdSecretRef *corev1.LocalObjectReference `json:"htpasswdSecretRef,omitempty"`

	// AnonymousPull opens pulls (and only pulls) to unauthenticated clients.
	// +optional
	AnonymousPull bool `json:"anonymousPull,omitempty"`

	// Challenge is how registryd asks for credentials: basic (user and
	// password on every request, followed by every client) or bearer (the
	// Docker token flow through /token, for clients that insist on it).
	// +kubebuilder:validation:Enum=basic;bearer
	// +kubebuilder:default=basic
	// +optional
	Challenge string `json:"challenge,omitempty"`

	// TokenAudiences, in kubernetes mode, are the audiences a token must be
	// issued for (TokenReview). Empty: the Registry's own,
	// stevedore.dev/registry/<namespace>/<name>, so a token handed to the
	// registry is no API-server credential
	// (`kubectl create token SA --audience stevedore.dev/registry/NS/NAME`).
	// +optional
	TokenAudiences []string `json:"tokenAudiences,omitempty"`
}

// RedirectSpec serves blob GETs as 307 redirects to signed backend URLs.
type RedirectSpec struct {
	// Enabled defaults to on for cloud backends and off for file:// and mem://.
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// TTL of the signed URL.
	// +kubebuilder:default="20m"
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`
}

// LimitsSpec bounds what clients can store.
type LimitsSpec struct {
	// +kubebuilder:default=4194304
	// +kubebuilder:validation:Minimum=1024
	// +optional
	MaxManifestBytes int64 `json:"maxManifestBytes,omitempty"`

	// MaxTagsPerRepository refuses a repository's tags past this many
	// (DENIED); unset: no limit. No object grows with the tags: past
	// MaxTagsPerObject a repository's tags are split over TagShards.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxTagsPerRepository int32 `json:"maxTagsPerRepository,omitempty"`
}

// GCSpec schedules online garbage collection.
// +kubebuilder:validation:XValidation:rule="!has(self.untaggedDelay) || (has(self.deleteUntagged) && self.deleteUntagged)",message="untaggedDelay needs deleteUntagged: true"
type GCSpec struct {
	// Schedule in cron syntax; empty disables scheduled collection.
	// +optional
	Schedule string `json:"schedule,omitempty"`
	// GracePeriod protects objects younger than this from the sweep.
	// +kubebuilder:default="1h"
	// +optional
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`
	// DeleteUntagged also sweeps manifests no tag or index reaches.
	// +optional
	DeleteUntagged bool `json:"deleteUntagged,omitempty"`
	// UntaggedDelay keeps an untagged manifest this long after it was last
	// pushed before deleteUntagged deletes it (shorter than gracePeriod:
	// the grace decides).
	// +optional
	UntaggedDelay *metav1.Duration `json:"untaggedDelay,omitempty"`
	// DryRun makes every run list what it would delete (in its Job's log;
	// counts in status.gc.lastRun) and delete nothing.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
}

// GCRequestAnnotation on a Registry asks for one collection now, with or
// without a schedule: each new value starts one Job (`kubectl annotate
// registry NAME stevedore.dev/gc-request=$(date +%s) --overwrite`);
// status.gc.lastRequest is the value last acted on.
const GCRequestAnnotation = "stevedore.dev/gc-request"

// GCStatus is what the garbage collector last did and will do next.
type GCStatus struct {
	// LastRun is the most recent collection that finished.
	// +optional
	LastRun *GCRun `json:"lastRun,omitempty"`
	// NextRunTime is when spec.gc.schedule next starts a collection (the
	// schedule read in UTC, as kube-controller-manager does unless its
	// own time zone is another).
	// +optional
	NextRunTime *metav1.Time `json:"nextRunTime,omitempty"`
	// LastRequest is the stevedore.dev/gc-request value last acted on.
	// +optional
	LastRequest string `json:"lastRequest,omitempty"`
}

// GCRun is one finished collection, from its Job and the report the
// collector leaves as its container's termination message.
type GCRun struct {
	// Job that ran it.
	Job string `json:"job"`
	// Succeeded is false when the collection failed (Message says why).
	Succeeded bool `json:"succeeded"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// DryRun: the counts are what the run would have deleted.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
	// DeletedObjects counts every bucket object deleted (manifests, links,
	// blobs, referrer entries, uploads, temp files, dead leases).
	// +optional
	DeletedObjects int64 `json:"deletedObjects,omitempty"`
	// Manifests and Blobs deleted.
	// +optional
	Manifests int64 `json:"manifests,omitempty"`
	// +optional
	Blobs int64 `json:"blobs,omitempty"`
	// ReclaimedBytes is the size of the blobs, uploads and temp files
	// deleted.
	// +optional
	ReclaimedBytes int64 `json:"reclaimedBytes,omitempty"`
	// StoredBlobs and StoredBytes are the Registry's physical size as of
	// the run: the blobs its listing found, each once whatever the
	// repositories sharing it, less those it deleted (in a dry run: would
	// delete). Blobs pushed while it ran come in the next run's.
	// +optional
	StoredBlobs int64 `json:"storedBlobs,omitempty"`
	// +optional
	StoredBytes int64 `json:"storedBytes,omitempty"`
	// Message is the collector's summary line, or its error.
	// +optional
	Message string `json:"message,omitempty"`
}

// MirrorSpec makes the Registry a pull-through cache of other registries
// (docs/mirror.md): nodes name it as the mirror of each upstream in
// containerd's hosts.toml; pulls are served from the Registry's storage,
// or fetched from the upstream once and kept. Cached content lives in the
// repositories <host>/<path> (docker.io/library/alpine; a port's ':'
// becomes '_'), which take no pushes.
type MirrorSpec struct {
	// Upstreams are the registries mirrored, each under its host name.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=host
	Upstreams []MirrorUpstream `json:"upstreams"`

	// TagTTL is how long a cached tag is served before the upstream is
	// asked again, with a HEAD (which Docker Hub does not count as a
	// pull). Pulls by digest never ask again.
	// +kubebuilder:default="5m"
	// +optional
	TagTTL *metav1.Duration `json:"tagTTL,omitempty"`

	// Offline serves the cached copy of a tag when the upstream fails or
	// no longer has it; false answers 503 then, once the TTL is over.
	// +kubebuilder:default=true
	// +optional
	Offline *bool `json:"offline,omitempty"`
}

// MirrorUpstream is one registry mirrored.
type MirrorUpstream struct {
	// Host as containerd names it, the ?ns= of its requests: docker.io,
	// ghcr.io, registry.example.com:5000.
	// +kubebuilder:validation:MaxLength=200
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$`
	Host string `json:"host"`

	// Endpoint is the upstream's base URL; default https://<host>
	// (https://registry-1.docker.io for docker.io). http:// is plain HTTP.
	// +kubebuilder:validation:Pattern=`^https?://[^/?#@]+/?$`
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// CredentialsSecretRef names a Secret with the keys username and
	// password registryd pulls from the upstream with. They are mounted
	// into registryd only, read when it starts (a rotated Secret takes
	// effect with the next rollout), and never logged or returned.
	// +optional
	CredentialsSecretRef *corev1.LocalObjectReference `json:"credentialsSecretRef,omitempty"`

	// CABundle is a PEM bundle trusted for the upstream's TLS, on top of
	// the system's roots.
	// +optional
	CABundle *CABundleSource `json:"caBundle,omitempty"`

	// Repositories are globs (path.Match: * stops at /) of the upstream's
	// repository names to cache, such as library/*; empty: all. Other
	// names get 404, so nodes pull them from the upstream directly.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Repositories []string `json:"repositories,omitempty"`
}

// CABundleSource is a key of a ConfigMap or of a Secret.
// +kubebuilder:validation:XValidation:rule="has(self.configMapKeyRef) != has(self.secretKeyRef)",message="caBundle takes exactly one of configMapKeyRef and secretKeyRef"
type CABundleSource struct {
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
	// +optional
	SecretKeyRef *corev1.SecretKeySelector `json:"secretKeyRef,omitempty"`
}

// RegistryRetention is the retention of the repositories whose path
// matches Repositories, unless a Repository has its own.
type RegistryRetention struct {
	// Repositories is a glob over repository paths: * within one path
	// segment, ** across segments ("team/*", "ci/**", "**").
	// +kubebuilder:validation:MinLength=1
	Repositories string `json:"repositories"`

	RetentionSpec `json:",inline"`
}

// ServiceAccountSpec shapes registryd's ServiceAccount.
type ServiceAccountSpec struct {
	// Annotations give registryd's pods a cloud identity of their own:
	// eks.amazonaws.com/role-arn (IRSA), iam.gke.io/gcp-service-account,
	// azure.workload.identity/client-id.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// RegistrySpec is what the user asks for.
// +kubebuilder:validation:XValidation:rule="!self.storage.url.startsWith('file://') || has(self.storage.persistentVolumeClaim)",message="file:// storage needs storage.persistentVolumeClaim: in an emptyDir every pod restart and rollout would lose every blob"
// +kubebuilder:validation:XValidation:rule="!has(self.storage.persistentVolumeClaim) || self.storage.url.startsWith('file://')",message="storage.persistentVolumeClaim is only for file:// storage"
// +kubebuilder:validation:XValidation:rule="!self.storage.url.startsWith('mem://') || !has(self.replicas) || self.replicas <= 1",message="mem:// storage lives in each pod's memory: replicas must be 0 or 1"
// +kubebuilder:validation:XValidation:rule="!self.storage.url.startsWith('file://') || !has(self.replicas) || self.replicas <= 1 || (has(self.storage.persistentVolumeClaim) && has(self.storage.persistentVolumeClaim.accessModes) && 'ReadWriteMany' in self.storage.persistentVolumeClaim.accessModes)",message="file:// storage with replicas > 1 needs a ReadWriteMany storage.persistentVolumeClaim: each pod would otherwise see a store of its own"
type RegistrySpec struct {
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Image of registryd; defaults to the operator's own image.
	// +optional
	Image string `json:"image,omitempty"`

	Storage StorageSpec `json:"storage"`

	// +optional
	ServiceAccount *ServiceAccountSpec `json:"serviceAccount,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Service ServiceSpec `json:"service,omitempty"`

	// +optional
	Ingress *IngressSpec `json:"ingress,omitempty"`

	// +optional
	TLS *TLSSpec `json:"tls,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Auth AuthSpec `json:"auth,omitempty"`

	// +optional
	Redirect *RedirectSpec `json:"redirect,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Limits LimitsSpec `json:"limits,omitempty"`

	// AutoCreateRepositories creates a Repository on first push.
	// +kubebuilder:default=true
	// +optional
	AutoCreateRepositories *bool `json:"autoCreateRepositories,omitempty"`

	// +optional
	GC *GCSpec `json:"gc,omitempty"`

	// Mirror makes the Registry a pull-through cache of other registries.
	// +optional
	Mirror *MirrorSpec `json:"mirror,omitempty"`
	// ImmutableTags are regular expressions (RE2, anchored at both ends)
	// naming tags that, once they exist in any repository of this
	// Registry, can be neither moved, nor deleted, nor removed with their
	// manifest. A Repository's own spec.immutableTags add to these. They
	// take effect on running registryd pods within seconds, without a
	// restart (docs/operator.md says exactly when).
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.all(p, ''.matches(p) || !''.matches(p))",message="spec.immutableTags: every entry must be a valid regular expression (RE2 syntax)"
	// +listType=atomic
	// +optional
	ImmutableTags []string `json:"immutableTags,omitempty"`

	// Quota bounds what all repositories of this Registry hold together
	// (docs/operator.md, Quotas). The number of repositories is capped by
	// a ResourceQuota on count/repositories.stevedore.dev instead.
	// +optional
	Quota *RegistryQuota `json:"quota,omitempty"`

	// Retention policies for the repositories, by path: the first entry
	// whose glob matches a repository applies to it; a Repository's own
	// spec.retention wins over all of them.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Retention []RegistryRetention `json:"retention,omitempty"`

	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// TopologySpreadConstraints of registryd's pods. Empty: with several
	// replicas, a soft spread over nodes (kubernetes.io/hostname).
	// +optional
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// ImagePullSecrets for registryd's image.
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// ImagePullPolicy of registryd's image; empty: Kubernetes' default
	// (Always for :latest, else IfNotPresent).
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// PodLabels and PodAnnotations are added to registryd's pods; the
	// operator's own labels (which select the pods) win over PodLabels.
	// +optional
	PodLabels map[string]string `json:"podLabels,omitempty"`
	// +optional
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`

	// Env is added to registryd's container (after the operator's own
	// variables, which it may not replace: TMPDIR).
	// +optional
	Env []corev1.EnvVar `json:"env,omitempty"`

	// PodSecurityContext replaces the operator's (runAsNonRoot, seccomp
	// RuntimeDefault, fsGroup 65532 for a file:// claim).
	// +optional
	PodSecurityContext *corev1.PodSecurityContext `json:"podSecurityContext,omitempty"`
	// SecurityContext of registryd's container replaces the operator's
	// (no privilege escalation, read-only root filesystem, non-root, all
	// capabilities dropped).
	// +optional
	SecurityContext *corev1.SecurityContext `json:"securityContext,omitempty"`
}

// RegistryStatus is what the operator observed.
type RegistryStatus struct {
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Replicas is registryd's pod count (the scale subresource's status).
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// Selector selects registryd's pods, for the scale subresource (an
	// HorizontalPodAutoscaler).
	// +optional
	Selector string `json:"selector,omitempty"`
	// Endpoint is the in-cluster host:port of the registry.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// Repositories counts the Repository objects of this registry.
	// +optional
	Repositories int32 `json:"repositories,omitempty"`
	// Storage is what the operator last learned about the bucket.
	// +optional
	Storage *StorageStatus `json:"storage,omitempty"`
	// Mirror tells nodes how to pull through the Registry (spec.mirror).
	// +optional
	Mirror *MirrorStatus `json:"mirror,omitempty"`
	// GC is what the garbage collector last did (spec.gc, docs/gc.md).
	// +optional
	GC *GCStatus `json:"gc,omitempty"`
	// Usage is what the repositories hold together, kept while spec.quota
	// is set: registryd reserves room here before it writes a tag and
	// settles after, with conditional updates, and the operator recounts it
	// from the Repositories.
	// +optional
	Usage *QuotaUsage `json:"usage,omitempty"`
}

// RegistryQuota bounds the totals of a Registry's repositories.
type RegistryQuota struct {
	// Bytes bounds the sum of the Repositories' status.bytes (each
	// repository's logical size). A push that would take the sum past it
	// is refused; one that does not grow its repository's usage is allowed
	// even over a lowered quota.
	// +optional
	Bytes *resource.Quantity `json:"bytes,omitempty"`
	// Tags bounds the sum of the Repositories' tag counts; a new tag past
	// it is refused, moving a tag is not.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Tags *int64 `json:"tags,omitempty"`
}

// QuotaUsage is the count a quota is checked against: a Registry's
// (status.usage, the sum of its repositories), or a Repository's whose
// tags are split over TagShards (status.usage, the sum of its shards).
type QuotaUsage struct {
	// Bytes and Tags: the sum as of the last recount, plus what settled
	// pushes and deletes added and freed since. Never less than the true
	// sum: it may be more by what writes in flight at a recount moved,
	// until the next one.
	Bytes int64 `json:"bytes"`
	Tags  int64 `json:"tags"`
	// Pending are the writes in flight. A push reserves its manifest's
	// whole content and one tag, which count against the quota until it
	// settles.
	// +listType=atomic
	// +optional
	Pending []UsageReservation `json:"pending,omitempty"`
	// CountedAt is the operator's last recount.
	// +optional
	CountedAt *metav1.Time `json:"countedAt,omitempty"`
}

// UsageReservationStale is the age past which a reservation is of a
// write that died (a tag write gives up after 30 s): the operator's
// recount drops it.
const UsageReservationStale = 5 * time.Minute

// UsageReservation is one write in flight.
type UsageReservation struct {
	// ID names the write (the replica's and a random part).
	ID string `json:"id"`
	// Bytes and Tags the write may add (a push); 0 for a delete.
	Bytes int64 `json:"bytes,omitempty"`
	Tags  int64 `json:"tags,omitempty"`
	// At is when it was made; one older than five minutes is a write that
	// died, and the next recount drops it.
	At metav1.Time `json:"at"`
	// Recounted: a recount happened while it was in flight. A delete that
	// settles then frees nothing (the recount may have seen it done).
	// +optional
	Recounted bool `json:"recounted,omitempty"`
}

// MirrorStatus holds what each node's containerd needs to use the
// Registry as its mirror (docs/mirror.md rolls it out).
type MirrorStatus struct {
	// Hosts has one entry per upstream.
	// +listType=map
	// +listMapKey=host
	// +optional
	Hosts []MirrorHostConfig `json:"hosts,omitempty"`
}

// MirrorHostConfig is containerd's configuration for one upstream.
type MirrorHostConfig struct {
	// Host is the upstream, as in spec.mirror.upstreams.
	Host string `json:"host"`
	// Path is where the file goes on each node (config_path
	// /etc/containerd/certs.d, containerd's default in 2.x).
	Path string `json:"path"`
	// HostsTOML is the file: the Registry's Service (ClusterIP, which
	// kube-proxy serves on every node) first, the upstream after it.
	HostsTOML string `json:"hostsToml"`
}

// StorageStatus records the operator's bucket probes, so they are spaced out
// whatever else makes the Registry reconcile.
type StorageStatus struct {
	// LastProbeTime is when the operator last wrote, read and deleted its
	// probe object. The next probe comes after the probe interval (5m after
	// a success, 30s after a failure by default) or on a spec change.
	// +optional
	LastProbeTime *metav1.Time `json:"lastProbeTime,omitempty"`

	// JournalImportedFrom is the storage location (url#prefix) whose tag
	// journal the operator imported into Repositories: once per Registry
	// and location, not again after an operator restart.
	// +optional
	JournalImportedFrom string `json:"journalImportedFrom,omitempty"`
}

// Registry is an OCI registry run by the operator.
// +kubebuilder:object:root=true
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 54 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="a Registry name must be a DNS label of at most 54 characters, starting with a letter: its Service is named <name>-registry"
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=reg
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Last GC",type=date,JSONPath=`.status.gc.lastRun.completionTime`,priority=1
// +kubebuilder:printcolumn:name="Stored",type=integer,JSONPath=`.status.gc.lastRun.storedBytes`,priority=1
// +kubebuilder:printcolumn:name="Bytes",type=integer,JSONPath=`.status.usage.bytes`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Registry struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RegistrySpec   `json:"spec"`
	Status RegistryStatus `json:"status,omitempty"`
}

// RegistryList is a list of Registry.
// +kubebuilder:object:root=true
type RegistryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Registry `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Registry{}, &RegistryList{})
}
