package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// profiler captures registryd CPU profiles while a workload runs, when
// BENCH_PPROF_DIR names a directory (registryd runs with --pprof).
type profiler struct {
	dir string
}

// during starts a CPU profile of s lasting d, named name, and returns a
// function that waits for it. It does nothing for distribution or when
// profiling is off.
func (p profiler) during(ctx context.Context, s *server, name string, d time.Duration) func() {
	if p.dir == "" || s.kind != registryd {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.fetch(ctx, s, name, d); err != nil {
			logf("profile %s: %v", name, err)
		}
	}()
	return func() { <-done }
}

// apiserver is during for the API server whose admin kubeconfig is
// given, through kubectl (from $KUBEBUILDER_ASSETS) and the API server's
// own /debug/pprof.
func (p profiler) apiserver(ctx context.Context, kubeconfig, name string, d time.Duration) func() {
	if p.dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
		out := filepath.Join(p.dir, name+".pprof")
		cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "--raw",
			fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())))
		body, err := cmd.Output()
		if err == nil {
			err = os.WriteFile(out, body, 0o644)
		}
		if err != nil {
			logf("profile %s: %v", name, err)
			return
		}
		logf("profile written: %s", out)
	}()
	return func() { <-done }
}

func (p profiler) fetch(ctx context.Context, s *server, name string, d time.Duration) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.debugAddr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(filepath.Join(p.dir, name+".pprof"))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	logf("profile written: %s", f.Name())
	return f.Close()
}
