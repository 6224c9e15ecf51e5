package main

import (
	"strings"
	"testing"
)

func TestMedianAndVerdict(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3 = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median of 4 = %v", got)
	}
	f := &figure{name: "push", unit: "MB/s", targetRatio: 2.5, values: map[kind][]float64{
		registryd: {500, 600, 700}, distribution: {100, 200, 300},
	}}
	if target, met := f.verdict(); target != "≥ 2.5×" || met != "met" {
		t.Errorf("verdict %q %q", target, met)
	}
	f.values[distribution] = []float64{300}
	if _, met := f.verdict(); met != "MISSED" {
		t.Errorf("2× counted as meeting 2.5×: %q", met)
	}
	rss := &figure{lowerIsBetter: true, absolute: func(m float64) (string, bool) { return "< 128 MiB", m < 128 },
		values: map[kind][]float64{registryd: {60}}}
	if target, met := rss.verdict(); target != "< 128 MiB" || met != "met" {
		t.Errorf("rss verdict %q %q", target, met)
	}
}

func TestKubeSection(t *testing.T) {
	out := `goos: linux
BenchmarkPushTags-2          	     600	 110000000 ns/op	         2.050 api-calls/tag	         0.5400 conflicts/tag	         9.100 tags/s
BenchmarkNewRepositories-2   	2026/12/01 13:58:28 INFO kubernetes tag store: Repository cache synced
     600	  12668995 ns/op	         3.000 api-calls/repository	        78.93 repositories/s
BenchmarkTagsAtLimit/get-one-2         	  100000	     11880 ns/op	         0 api-calls
BenchmarkStatusUpdateBySize/tags=1500-2       	      40	 296023793 ns/op	       641.0 KiB/object	       296.0 ms/update
ok  	github.com/stevedore-dev/stevedore/registryd/tags/kube	120.1s
`
	md, err := kubeSection(out, &kubeHTTPResult{tagsPerSecond: 25, getByTag: 6000}, 2000, 8)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"9.1 tags/s", "2.05 API requests/tag", "≥ 200: MISSED", "78.9 new repositories/s (3.0 API requests each)", "0 (asserted)", "3.00× distribution", "25.0 tags/s", "296.0 ms a status update (one tag moved) of a 641 KiB Repository"} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks %q:\n%s", want, md)
		}
	}
	if _, err := kubeSection(strings.Replace(out, " 0 api-calls", " 3 api-calls", 1), nil, 0, 8); err == nil {
		t.Error("API calls on the read path passed")
	}
}

func TestLoadOutputChecks(t *testing.T) {
	if m := abFailed.Find([]byte("Failed requests:        0\nNon-2xx responses:      12\n")); m == nil {
		t.Error("ab non-2xx answers not caught")
	}
	if m := abFailed.Find([]byte("Failed requests:        0\n")); m != nil {
		t.Errorf("clean ab run flagged: %s", m)
	}
	if m := wrkNon2xx.Find([]byte("  Non-2xx or 3xx responses: 5\n")); m == nil {
		t.Error("wrk non-2xx answers not caught")
	}
}
