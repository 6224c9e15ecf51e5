// Command stevedore-credential-provider is a kubelet image credential
// provider (exec plugin, credentialprovider.kubelet.k8s.io/v1) that lets a
// pod pull from a Stevedore Registry in auth mode kubernetes with its own
// ServiceAccount: it answers the kubelet's CredentialProviderRequest on
// stdin with the pod's service-account token as the registry password.
// docs/workload-identity.md shows the node setup.
//
// Flags (each also read from the environment variable named after it, for
// the env list of the kubelet's CredentialProviderConfig):
//
//	--max-cache-duration  STEVEDORE_MAX_CACHE_DURATION  how long the kubelet may reuse an answer (default 10m; 0: never)
//	--expiry-margin       STEVEDORE_EXPIRY_MARGIN       stop reusing it this long before the token expires (default 5m)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/stevedore-dev/stevedore/internal/credentialprovider"
	"github.com/stevedore-dev/stevedore/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr))
}

// run is the command: 0 with a response on stdout, 2 for bad flags, 1 with
// the reason on stderr (the kubelet logs it) otherwise.
func run(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stevedore-credential-provider", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o credentialprovider.Options
	fs.DurationVar(&o.MaxCacheDuration, "max-cache-duration", credentialprovider.DefaultMaxCacheDuration,
		"how long the kubelet may reuse an answer, at most (0: never; always cut to end --expiry-margin before the token expires) [$STEVEDORE_MAX_CACHE_DURATION]")
	fs.DurationVar(&o.ExpiryMargin, "expiry-margin", credentialprovider.DefaultExpiryMargin,
		"the kubelet stops reusing an answer this long before its token expires [$STEVEDORE_EXPIRY_MARGIN]")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fromEnv(fs, getenv, map[string]string{
		"max-cache-duration": "STEVEDORE_MAX_CACHE_DURATION",
		"expiry-margin":      "STEVEDORE_EXPIRY_MARGIN",
	}); err != nil {
		fmt.Fprintln(stderr, "stevedore-credential-provider:", err)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "stevedore-credential-provider: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.Version)
		return 0
	}
	if o.MaxCacheDuration < 0 || o.ExpiryMargin < 0 {
		fmt.Fprintln(stderr, "stevedore-credential-provider: --max-cache-duration and --expiry-margin must not be negative")
		return 2
	}
	resp, err := credentialprovider.Respond(stdin, o)
	if err == nil {
		err = credentialprovider.Write(stdout, resp)
	}
	if err != nil {
		fmt.Fprintln(stderr, "stevedore-credential-provider:", err)
		return 1
	}
	return 0
}

// fromEnv sets each flag whose environment variable is set; flags given on
// the command line are parsed afterwards and win.
func fromEnv(fs *flag.FlagSet, getenv func(string) string, vars map[string]string) error {
	var errs []error
	for name, env := range vars {
		if v := getenv(env); v != "" {
			if err := fs.Set(name, v); err != nil {
				errs = append(errs, fmt.Errorf("$%s=%q: %w", env, v, err))
			}
		}
	}
	return errors.Join(errs...)
}
