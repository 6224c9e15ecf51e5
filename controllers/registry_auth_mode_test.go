package controllers

import (
	"slices"
	"testing"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestAuthModeReadOneWay: an empty auth mode (a Registry stored before the
// CRD defaulted it) is kubernetes for registryd's flags and for the
// auth-delegator binding alike; registryd would otherwise run kubernetes
// auth without the right to review tokens.
func TestAuthModeReadOneWay(t *testing.T) {
	for _, tc := range []struct {
		mode    v1.AuthMode
		binding bool
	}{{"", true}, {v1.AuthKubernetes, true}, {v1.AuthNone, false}, {v1.AuthHtpasswd, false}} {
		t.Run(string(tc.mode), func(t *testing.T) {
			reg := &v1.Registry{Spec: v1.RegistrySpec{Auth: v1.AuthSpec{Mode: tc.mode}}}
			flagSaysKubernetes := slices.Contains(RegistrydArgs(reg), "--auth=kubernetes")
			if got := wantsAuthDelegator(reg); got != tc.binding || got != flagSaysKubernetes {
				t.Errorf("mode %q: binding %v, registryd --auth=kubernetes %v, want both %v", tc.mode, got, flagSaysKubernetes, tc.binding)
			}
		})
	}
}
