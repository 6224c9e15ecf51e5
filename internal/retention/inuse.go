package retention

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// InUse is what the cluster's workloads reference, by repository path.
// Hosts are ignored: an image "other.example/team/app:v1" protects
// team/app:v1 of every Registry too. Protecting too much is the safe side;
// a registry cannot know every name (Service, Ingress, node-local mirror)
// it is reached by.
type InUse struct {
	byPath map[string]*Protection
}

// Protection returns what is in use in the repository at path (never nil maps).
func (u *InUse) Protection(path string) Protection {
	if p, ok := u.byPath[path]; ok {
		return *p
	}
	return Protection{Tags: map[string]bool{}, Digests: map[string]bool{}}
}

// AddImage records an image reference as a pod spec or a container
// status holds it: [host/]path[:tag][@digest], or an image ID with a
// runtime's scheme (docker-pullable://…).
func (u *InUse) AddImage(ref string) {
	if i := strings.Index(ref, "://"); i >= 0 {
		ref = ref[i+3:]
	}
	name, dgst, _ := strings.Cut(ref, "@")
	tag := ""
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	if first, rest, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		name = rest // a registry host
	}
	if name == "" {
		return
	}
	if u.byPath == nil {
		u.byPath = map[string]*Protection{}
	}
	p, ok := u.byPath[name]
	if !ok {
		p = &Protection{Tags: map[string]bool{}, Digests: map[string]bool{}}
		u.byPath[name] = p
	}
	if tag == "" && dgst == "" {
		tag = "latest"
	}
	if tag != "" {
		p.Tags[tag] = true
	}
	if dgst != "" {
		p.Digests[dgst] = true
	}
}

// AddPodSpec records every image of a pod spec or template: containers,
// init containers and ephemeral containers.
func (u *InUse) AddPodSpec(spec *corev1.PodSpec) {
	for _, c := range spec.Containers {
		u.AddImage(c.Image)
	}
	for _, c := range spec.InitContainers {
		u.AddImage(c.Image)
	}
	for _, c := range spec.EphemeralContainers {
		u.AddImage(c.Image)
	}
}

// AddPod records a pod's spec and the digests its containers run
// (status imageID), which pin the manifest even after its tag moved.
func (u *InUse) AddPod(pod *corev1.Pod) {
	u.AddPodSpec(&pod.Spec)
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range list {
			if strings.Contains(s.ImageID, "@") {
				u.AddImage(s.ImageID)
			}
		}
	}
}
