// Package kubetest holds the tests of registryd/auth's kubernetes mode
// against a real API server (envtest). They live apart from package auth
// so that auth's test binary, which its fuzz target builds instrumented,
// does not hold envtest, controller-runtime and client-go's clientset: on a
// cold build cache that instrumented build was most of `make fuzz`.
package kubetest
