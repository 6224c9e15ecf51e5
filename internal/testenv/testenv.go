// Package testenv starts one real kube-apiserver + etcd (controller-runtime's
// envtest) per test package, with Stevedore's CRDs installed.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/mod/modfile"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	stevedorev1alpha1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// Env is a running API server and a client for it.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	env    *envtest.Environment
}

// RepoRoot is the repository's top directory: found from this file's path
// when the binary was built with it, else (built with -trimpath, as make
// test builds so a fresh clone reuses the build cache) the nearest
// directory above the working directory whose go.mod declares this module.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	if filepath.IsAbs(file) {
		return filepath.Join(filepath.Dir(file), "..", "..")
	}
	dir, err := os.Getwd()
	if err != nil {
		panic(fmt.Sprintf("testenv: the repository root: %v", err))
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && modfile.ModulePath(b) == rootModule {
			return d
		}
		if filepath.Dir(d) == d {
			panic(fmt.Sprintf("testenv: no go.mod of %s above %s", rootModule, dir))
		}
	}
}

const rootModule = "github.com/stevedore-dev/stevedore"

// Options change the API server Start brings up.
type Options struct {
	// APIServerFlags are set on kube-apiserver, replacing envtest's value
	// of the same flag (e.g. "authorization-mode": {"Node,RBAC"}).
	APIServerFlags map[string][]string
}

// Start brings up kube-apiserver and etcd from KUBEBUILDER_ASSETS (set by
// `make test` from hack/envtest-assets.sh) and installs config/crd/bases.
func Start() (*Env, error) { return StartWith(Options{}) }

// StartWith is Start with o.
func StartWith(o Options) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	scheme := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := stevedorev1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	env, cfg, err := start(scheme, o)
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: env}, nil
}

// startAttempts and startTimeout make a start survive a loaded machine:
// envtest gives kube-apiserver 20 s to come up, then the default namespace
// 5 s to appear, and both were missed once with three API servers starting
// beside the real node's image builds (ci20). A failed attempt is stopped
// and a fresh control plane started.
const (
	startAttempts = 3
	startTimeout  = 2 * time.Minute
)

func start(scheme *k8sruntime.Scheme, o Options) (*envtest.Environment, *rest.Config, error) {
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		env := &envtest.Environment{
			CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
			ErrorIfCRDPathMissing: true,
			Scheme:                scheme,
		}
		if os.Getenv("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT") == "" {
			env.ControlPlaneStartTimeout = startTimeout
		}
		for flag, values := range o.APIServerFlags {
			env.ControlPlane.GetAPIServer().Configure().Set(flag, values...)
		}
		cfg, err := env.Start()
		if err == nil {
			return env, cfg, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		fmt.Fprintf(os.Stderr, "testenv: starting envtest, attempt %d of %d: %v\n", attempt, startAttempts, err)
		_ = env.Stop()
	}
	return nil, nil, fmt.Errorf("starting envtest: %w", errors.Join(errs...))
}

// AddUser adds a user to the API server (e.g. one in system:masters for a kubeconfig).
func (e *Env) AddUser(u envtest.User, cfg *rest.Config) (*envtest.AuthenticatedUser, error) {
	return e.env.AddUser(u, cfg)
}

// WriteKubeconfig writes dir/kubeconfig for a user in system:masters, for
// kubectl and processes run against the env, and returns its path.
func (e *Env) WriteKubeconfig(dir string) (string, error) {
	user, err := e.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("adding a user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, kc, 0o600)
}

// AssetsDir holds kube-apiserver, etcd and kubectl.
func (e *Env) AssetsDir() string { return e.env.BinaryAssetsDirectory }

// Stop shuts the API server and etcd down.
func (e *Env) Stop() error { return e.env.Stop() }

// Main runs a package's tests against one shared Env, for use in TestMain.
// setup starts what the package needs on top (an operator, say) and returns
// how to stop it; that runs before the API server stops.
func Main(m interface{ Run() int }, setup func(*Env) (teardown func(), err error)) int {
	env, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()
	teardown, err := setup(env)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if teardown != nil {
		teardown()
	}
	return code
}
