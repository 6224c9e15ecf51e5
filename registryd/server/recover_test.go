package server

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// panickyTags is a tag store whose listing panics, as a bug in any layer
// below a handler would.
type panickyTags struct{ tags.Store }

func (panickyTags) List(context.Context, string, int, string) ([]string, error) {
	var s []string
	return s[:1], nil // index out of range
}

// TestPanicBecomes500 checks a panicking handler answers the spec's 500
// envelope on a connection that stays usable, logs one error line with the
// stack, and counts the panic.
func TestPanicBecomes500(t *testing.T) {
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { _ = b.Close() })
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(New(b, panickyTags{tags.NewBucket(b)}, &Options{
		Logger: slog.New(slog.NewJSONHandler(logs, nil)), Registerer: reg,
	}))
	t.Cleanup(srv.Close)
	r := &testRegistry{t: t, bucket: b, url: srv.URL}
	r.pushBlob("app", []byte("a layer")) // the repository exists

	for _, method := range []string{"GET", "HEAD"} {
		resp := r.do(method, "/v2/app/tags/list", nil)
		code := "UNKNOWN"
		if method == "HEAD" {
			code = ""
		}
		r.expect(resp, http.StatusInternalServerError, code)
	}
	// The server keeps serving.
	r.expect(r.do("GET", "/v2/", nil), http.StatusOK, "")

	var panicLines []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"level":"ERROR"`) {
			panicLines = append(panicLines, l)
		}
	}
	if len(panicLines) != 2 {
		t.Fatalf("want one error line per panic, got %d:\n%s", len(panicLines), logs)
	}
	for _, l := range panicLines {
		if !strings.Contains(l, "out of range") || !strings.Contains(l, "panickyTags.List") {
			t.Errorf("error line lacks the panic or its stack: %s", l)
		}
	}
	if got := counterValue(t, reg, "registryd_panics_total"); got != 2 {
		t.Fatalf("registryd_panics_total = %v, want 2", got)
	}
}

// counterValue sums the counter family called name on reg (0 if absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
