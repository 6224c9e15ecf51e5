package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// s3Options shape workload 8: both servers on the versitygw bucket of
// workload 7, with blob redirects off and on.
type s3Options struct {
	layerBytes int64 // BENCH_S3_LAYER_MIB (64; 0 skips workload 8)
}

// s3Server starts k on the versitygw bucket under prefix, redirecting blob
// GETs to signed URLs or not. Both get the same bucket, prefix scheme and
// credentials; registryd through gocloud's s3blob, distribution through
// its s3-aws driver.
func s3Server(ctx context.Context, o options, k kind, prefix string, redirect bool) (*server, error) {
	s, tmp, err := newServer(k, o.workDir, string(k)+"-s3-")
	if err != nil {
		return nil, err
	}
	addr := s.addr
	switch k {
	case registryd:
		args := []string{"--addr", addr, "--debug-addr", s.debugAddr, "--storage", o.gc.s3URL, "--storage-prefix", prefix, "--auth", "none", "--shutdown-delay", "0s"}
		if redirect {
			args = append(args, "--redirect-ttl", "5m")
		}
		s.cmd = exec.Command(o.bins.Registryd, args...)
		s.cmd.Env = append(append(os.Environ(), "STEVEDORE_HTTP_SECRET=bench", "TMPDIR="+tmp), o.gc.s3Env...)
	case distribution:
		storage, err := distributionS3Storage(o.gc.s3URL, o.gc.s3Env, prefix, redirect)
		if err != nil {
			return nil, err
		}
		if err := s.useDistribution(o.bins.Distribution, tmp, storage); err != nil {
			return nil, err
		}
	}
	return s, s.start(ctx)
}

// distributionS3Storage is the storage block pointing distribution's
// s3-aws driver at the bucket of the gocloud URL s3URL (endpoint, path
// style) with the credentials of env, under prefix.
func distributionS3Storage(s3URL string, env []string, prefix string, redirect bool) (string, error) {
	u, err := url.Parse(s3URL)
	if err != nil {
		return "", err
	}
	creds := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		creds[k] = v
	}
	region := creds["AWS_REGION"]
	if region == "" {
		region = "us-east-1"
	}
	return fmt.Sprintf(`  s3:
    accesskey: %s
    secretkey: %s
    region: %s
    regionendpoint: %s
    forcepathstyle: true
    bucket: %s
    rootdirectory: /%s
  redirect:
    disable: %t
`, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"], region, u.Query().Get("endpoint"), u.Host, prefix, !redirect), nil
}

// s3Workload is workload 8: per round and server, crane pushes the image
// into a fresh prefix with redirects off, then crane pulls it and curl GETs
// its layers, once from that server and once from one started with
// redirects on over the same prefix (a 307 to a URL the storage signed:
// the bytes then come from versitygw, not from the registry).
func s3Workload(ctx context.Context, o options, layoutDir string, layers []v1.Hash, total int64) (*table, error) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		return nil, fmt.Errorf("curl (workload 8): %w", err)
	}
	t := &table{title: fmt.Sprintf("8. S3 (versitygw on this machine): crane push and pull of %d × %d MiB, and curl GETs of the layers, blob redirects off and on",
		len(layers), total/int64(len(layers))>>20)}
	push := t.add(&figure{name: "push, crane process", unit: "MB/s"})
	pullOff := t.add(&figure{name: "pull, crane process, redirects off", unit: "MB/s"})
	getOff := t.add(&figure{name: "GET each layer with curl, redirects off", unit: "MB/s"})
	pullOn := t.add(&figure{name: "pull, crane process, redirects on", unit: "MB/s"})
	getOn := t.add(&figure{name: "GET each layer with curl -L, redirects on", unit: "MB/s"})
	stamp := time.Now().UTC().Format("150405")
	for round := range o.rounds {
		order := []kind{registryd, distribution}
		if round%2 == 1 {
			order = []kind{distribution, registryd}
		}
		for _, k := range order {
			logf("round %d/%d, %s: workload 8 (S3)", round+1, o.rounds, k)
			prefix := fmt.Sprintf("bench-s3-%s/%s-%d", stamp, k, round)
			err := func() error {
				s, err := s3Server(ctx, o, k, prefix, false)
				if err != nil {
					return err
				}
				defer s.stop()
				up, down, err := pushPullCrane(ctx, o.crane, s, layoutDir, total)
				push.record(k, up)
				pullOff.record(k, down)
				if err != nil {
					return err
				}
				get, err := curlLayers(ctx, curl, s, "big/crane", layers, total)
				getOff.record(k, get)
				return err
			}()
			if err != nil {
				return nil, err
			}
			err = func() error {
				s, err := s3Server(ctx, o, k, prefix, true)
				if err != nil {
					return err
				}
				defer s.stop()
				if err := expectRedirect(ctx, s, "big/crane", layers[0]); err != nil {
					return err
				}
				down, err := pullCrane(ctx, o.crane, s, total)
				pullOn.record(k, down)
				if err != nil {
					return err
				}
				get, err := curlLayers(ctx, curl, s, "big/crane", layers, total)
				getOn.record(k, get)
				return err
			}()
			if err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// expectRedirect checks that s answers a blob GET with a redirect, so the
// "redirects on" figures measure what they say.
func expectRedirect(ctx context.Context, s *server, repo string, d v1.Hash) error {
	out, err := exec.CommandContext(ctx, "curl", "-sS", "-o", os.DevNull, "-w", "%{http_code}", s.URL()+"/v2/"+repo+"/blobs/"+d.String()).Output()
	if err != nil {
		return fmt.Errorf("blob GET from %s: %w", s.kind, err)
	}
	if code := strings.TrimSpace(string(out)); code != "307" && code != "302" {
		return fmt.Errorf("%s with redirects on answered a blob GET with %s, not a redirect", s.kind, code)
	}
	return nil
}
