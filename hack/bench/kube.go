package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// kubeBench is one line of `go test -bench` output.
type kubeBench struct {
	name    string
	metrics map[string]float64 // unit -> value ("ns/op", "tags/s", "api-calls", …)
}

func parseBenchLines(out string) []kubeBench {
	var res []kubeBench
	lines := strings.Split(out, "\n")
	for n, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if len(f) < 2 || !isCount(f[1]) {
			// A log line interleaved after the name: the figures are on
			// the next line that starts with the iteration count.
			for _, next := range lines[n+1:] {
				if g := strings.Fields(next); len(g) >= 3 && isCount(g[0]) {
					f = append([]string{f[0]}, g...)
					break
				}
			}
		}
		if len(f) < 4 {
			continue
		}
		b := kubeBench{name: f[0], metrics: map[string]float64{}}
		// f[1] is the iteration count; then value/unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				b.metrics[f[i+1]] = v
			}
		}
		res = append(res, b)
	}
	return res
}

// isCount reports whether s is a benchmark's iteration count.
func isCount(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// runKubeBench runs the kubernetes tag-store Go benchmarks of the
// repository at root against the real API server in $KUBEBUILDER_ASSETS.
// BenchmarkStatusUpdateBySize runs a fixed 40 updates a size: at 2,500
// tags one takes about 240 ms, so benchtime's count would take minutes.
func runKubeBench(ctx context.Context, root, benchtime string) (string, error) {
	var all strings.Builder
	const bySize = "^BenchmarkStatusUpdateBySize$"
	for _, args := range [][]string{{"-bench", ".", "-skip", bySize, "-benchtime", benchtime}, {"-bench", bySize, "-benchtime", "40x"}} {
		cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-count=1", "-run", "^$"}, append(args, "./registryd/tags/kube")...)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kubernetes tag-store benchmarks: %w:\n%s", err, lastLines(string(out), 30))
		}
		all.Write(out)
	}
	return all.String(), nil
}

// kubeSection renders workload 6: registryd in kubernetes mode over HTTP
// (when run), and the tag-store benchmarks' output (when run), asserting
// that reads served by the informer cache made no API call.
func kubeSection(benchOut string, h *kubeHTTPResult, distGetByTag float64, pushers int) (string, error) {
	var b strings.Builder
	b.WriteString("### 6. Kubernetes mode (real kube-apiserver + etcd)\n\n")
	if h == nil && benchOut == "" {
		b.WriteString("Not run.\n\n")
		return b.String(), nil
	}
	if h != nil {
		b.WriteString("registryd as `make dev` runs it (hack/dev: the operator, the sample Registry, registryd with the operator's arguments), over HTTP:\n\n")
		b.WriteString("| Figure | registryd | API-server requests during the load |\n|---|---:|---:|\n")
		fmt.Fprintf(&b, "| tag pushes into one repository (manifest PUT by tag, %d pushers; its tags past 32 in TagShards) | %.1f tags/s | — |\n", pushers, h.tagsPerSecond)
		ratio := ""
		if distGetByTag > 0 {
			ratio = fmt.Sprintf(" (%.2f× distribution's GET by tag in workload 3)", h.getByTag/distGetByTag)
		}
		fmt.Fprintf(&b, "| GET manifest by tag, tags from the informer cache | %.0f req/s%s | %.0f (asserted 0: registryd's stevedore_kube_api_requests_total; besides, %.0f Events of the earlier tag pushes went out meanwhile) |\n", h.getByTag, ratio, h.apiRequests, h.events)
		for _, nr := range []*newReposResult{h.newRepos, h.newReposGo} {
			if nr == nil {
				continue
			}
			met := "MISSED"
			if nr.perSecond >= 50 {
				met = "met"
			}
			how, clients := "concurrent `crane copy` processes, one process per copy", "the crane processes"
			if nr.inProcess {
				how, clients = "goroutines of one process running go-containerregistry's remote.Write (crane copy's code, without a process per copy)", "that process"
			}
			fmt.Fprintf(&b, "| one small image copied into %d new repositories by %d %s (target ≥ 50/s: %s); CPU meanwhile, in cores: kube-apiserver %.2f, etcd %.2f, operator %.2f, registryd %.2f, %s %.2f (%s each) | %.1f repositories/s | registryd: %.1f per new repository (%s); all clients as the API server counted them, the operator's included: %.1f (%s) |\n",
				nr.repos, nr.pushers, how, met, nr.apiserver, nr.etcd, nr.operator, nr.registryd, clients, nr.clients, nr.perCopy.Round(time.Millisecond), nr.perSecond, nr.apiPerRepo, nr.detail, nr.allPerRepo, nr.allDetail)
		}
		b.WriteString("\n")
	}
	if benchOut == "" {
		return b.String(), nil
	}
	benches := parseBenchLines(benchOut)
	if len(benches) == 0 {
		return "", fmt.Errorf("no benchmark lines in:\n%s", benchOut)
	}
	b.WriteString("The tag store alone (registryd/tags/kube Go benchmarks at registryd's API client limit; PushTags: 3 replicas, the writers its name gives, one repository, its tags split over TagShards of at most 32, target ≥ 200 tags/s, /limit: with the Registry's maxTagsPerRepository set, so every push reserves on the repository's status.usage; ManyTags: reads of a repository of 10,000 tags in TagShards; NewRepositories: one replica, 8 writers, one new repository per push; StatusUpdateBySize: one writer, what a status update costs as the object grows):\n\n")
	b.WriteString("| Benchmark | Figure | API-server requests on the read path |\n|---|---:|---:|\n")
	for _, k := range benches {
		figure := ""
		if v, ok := k.metrics["tags/s"]; ok {
			verdict := "≥ 200: " + yesNo(v >= 200)
			if strings.Contains(k.name, "/limit") {
				verdict = "the price of a tag limit: no target"
			}
			figure = fmt.Sprintf("%.1f tags/s into one repository (%.2f conflicts/tag, %.2f API requests/tag; %s)", v, k.metrics["conflicts/tag"], k.metrics["api-calls/tag"], verdict)
		} else if v, ok := k.metrics["ms/update"]; ok {
			figure = fmt.Sprintf("%.1f ms a status update (one tag moved) of a %.0f KiB Repository", v, k.metrics["KiB/object"])
		} else if v, ok := k.metrics["repositories/s"]; ok {
			figure = fmt.Sprintf("%.1f new repositories/s (%.1f API requests each)", v, k.metrics["api-calls/repository"])
		} else if ns, ok := k.metrics["ns/op"]; ok {
			figure = fmt.Sprintf("%s per read (%.0f reads/s)", time.Duration(ns).Round(10*time.Nanosecond), 1e9/ns)
		}
		calls := "—"
		if v, ok := k.metrics["api-calls"]; ok {
			if v != 0 {
				return "", fmt.Errorf("%s made %v API-server requests; reads must come from the informer cache", k.name, v)
			}
			calls = "0 (asserted)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", strings.TrimPrefix(k.name, "Benchmark"), figure, calls)
	}
	b.WriteString("\n")
	return b.String(), nil
}
