package server

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests       *prometheus.CounterVec
	bytesIn        *prometheus.CounterVec
	bytesOut       *prometheus.CounterVec
	uploadDuration prometheus.Histogram
	panics         prometheus.Counter
	inflight       prometheus.Gauge
	rejected       prometheus.Counter
}

// newMetrics creates the collectors and registers them on reg when given.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "registryd_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "registryd_http_request_bytes_total", Help: "Request body bytes received, by route.",
		}, []string{"route"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "registryd_http_response_bytes_total", Help: "Response body bytes sent, by route.",
		}, []string{"route"}),
		uploadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "registryd_upload_duration_seconds", Help: "Time from upload start to blob committed.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "registryd_panics_total", Help: "Handler panics recovered into a 500 (each also logged with its stack).",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "registryd_http_requests_in_flight", Help: "Requests being served, capped by --max-concurrent-requests.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "registryd_http_requests_rejected_total", Help: "Requests answered 429 because --max-concurrent-requests were in flight.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.bytesIn, m.bytesOut, m.uploadDuration, m.panics, m.inflight, m.rejected)
	}
	return m
}

func (m *metrics) observe(route, method string, status int, in, out int64) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.bytesIn.WithLabelValues(route).Add(float64(in))
	m.bytesOut.WithLabelValues(route).Add(float64(out))
}

func (m *metrics) observeUpload(d time.Duration) { m.uploadDuration.Observe(d.Seconds()) }

// recorder captures the status and body size of a response.
type recorder struct {
	http.ResponseWriter
	status      int
	n           int64
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

// ReadFrom keeps the underlying writer's ReadFrom (the progress writer's,
// which copies in writes a window's deadline bounds) reachable through the
// recorder.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	r.wroteHeader = true
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
	}
	r.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
