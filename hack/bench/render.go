package main

import (
	"fmt"
	"strings"
	"time"
)

// renderReport is docs/benchmarks.md: the tables, the machine, how the two
// servers were set up, and how to reproduce.
func renderReport(o options, machine string, started time.Time, tables []*table, kube string) string {
	var b strings.Builder
	b.WriteString("# Benchmarks: registryd side by side with distribution\n\n")
	b.WriteString("Written by `make bench` (hack/bench.sh, hack/bench/); do not edit by hand.\n\n")
	fmt.Fprintf(&b, "- Run: %s, %s wall time for the side-by-side part.\n", started.UTC().Format("2006-01-02 15:04 UTC"), time.Since(started).Round(time.Second))
	fmt.Fprintf(&b, "- Machine: %s.\n", machine)
	fmt.Fprintf(&b, "- Rounds: %d (workload 1), %d (workloads 2, 4, 8), %d (workload 3); each cell is the median [min–max] over the rounds "+
		"(over every pull and pass of the rounds where a row says it takes several a round). "+
		"Rounds alternate which server goes first (A,B then B,A). The run starts once the one-minute load average is under 1 (or after 3 minutes).\n\n", o.bytesRounds, o.rounds, o.wrkRounds)
	for _, t := range tables {
		b.WriteString(t.markdown())
	}
	b.WriteString(kube)
	b.WriteString(setupNotes)
	fmt.Fprintf(&b, "## Reproduce\n\n```sh\n%s\n```\n\n", o.reproduce)
	b.WriteString("Knobs (environment): `BENCH_BYTES_ROUNDS` (5), `BENCH_ROUNDS` (3), `BENCH_WRK_ROUNDS` (2), `BENCH_WRK_SECONDS` (10), " +
		"`BENCH_WRK_CONNECTIONS` (32), `BENCH_LAYERS` (4), `BENCH_LAYER_MIB` (256), `BENCH_SMALL_IMAGES` (200), " +
		"`BENCH_PUSHERS` (8), `BENCH_CHUNKED_MIB` (256), `BENCH_CHUNK_MIB` (5), `BENCH_TAGS` (kube benchmark -benchtime), " +
		"`BENCH_KUBE_TAGS` (100; 0 skips kubernetes mode over HTTP), `BENCH_KUBE_NEW_REPOS` (1000; 0 skips the new repositories), `BENCH_SKIP_CRANE`, `BENCH_KEEP` (keep the servers' directories and logs), " +
		"`BENCH_PPROF_DIR` (CPU profiles of registryd during the Go push and the manifest loads), " +
		"`BENCH_GC_IMAGES` (1000), `BENCH_GC_BLOBS` (10000), `BENCH_GC_CLIENTS` (2 pushers and 2 pullers), `BENCH_GC_WINDOW_SECONDS` (10), `BENCH_GC_ROUNDS` (3), " +
		"`BENCH_GC_WORKERS` (16), `BENCH_GC_DISTRIBUTION` (0 skips distribution's garbage-collect), `BENCH_ONLY=gc` (workload 7 alone: `make bench-gc`), `BENCH_ONLY=kube` (workload 6 over HTTP alone: `make bench-kube`), `BENCH_ONLY=bytes` (workload 1 and the machine limits alone: `make bench-bytes`), " +
		"`BENCH_S3_LAYER_MIB` (64; 0 skips workload 8), `BENCH_ONLY=s3` (workload 8 alone: `make bench-s3`).\n")
	return b.String()
}

const setupNotes = `## How the two are set up

- **Same machine, same loopback, same disk.** Each server is started fresh for
  each workload of each round, on its own new directory under one scratch
  directory, with ` + "`TMPDIR`" + ` inside it; the directory is removed afterwards.
- **registryd**: ` + "`registryd --storage file://DIR --auth none`" + `, the gocloud
  fileblob driver. fileblob writes each object to a temp file, then renames it
  into place; registryd fsyncs the file's data before the rename and the
  directory after it (durable commits, ` + "`registryd/storage/durable.go`" + `); while a
  file is written it sends its pages to the disk every 2 MiB and flushes it every
  16 MiB in the background (docs/registryd.md). It turns off fileblob's attribute
  sidecars, so it computes no MD5 of what it writes.
- **distribution v3.1.2**: filesystem driver on DIR, in-memory blob descriptor
  cache (as its shipped config), access log off so that both log one line per
  request. Its filesystem driver **fsyncs** every file it commits (upload data
  and small files, and the directory after a small file's rename), then renames.
  Both pay for durability; the machine's fsync and no-fsync disk rates are in
  the limits table to read the cost against.
- **Clients**: go-containerregistry's remote package in the harness process
  (four concurrent blob uploads, its default; pulls verify every digest),
  ` + "`crane`" + ` as a process (push of an OCI layout; pull as a tarball into
  /dev/null; a round pushes once, then pulls 3 times and GETs the layers
  with curl in 5 passes, every pull and pass recorded), wrk (Debian) for manifest GETs with ` + "`-t2`" + `, and ab (Debian's
  apache2-utils) for HEADs, which wrk cannot do (it waits for the body a HEAD
  answer announces); both with keep-alive and an OCI manifest Accept header.
  Any non-2xx answer fails the run. The layers are uncompressed random bytes,
  read once into the page cache before every push (this VM's kernel pages
  out files idle for a minute, and a client reading its image from the disk
  while the registry writes made both slower). Clients and servers share the
  same cores.
- **Reading the numbers.** A push is bound by CPU on both servers: each must
  hash every byte (sha256), copy it from the socket into the page cache, on
  the same cores as the client sending it, and have it on the disk before the
  201 (registryd sends a blob to the disk as it arrives, distribution syncs
  it at its end). Compare the push rates with the sha256 and disk limits
  above (the durable-push row is the disk's ceiling for this image) rather
  than with each other alone. The
  sink row is crane alone: no registry that reads the bytes can take its push
  faster, so a push ratio over distribution is bounded by sink / distribution. A pull
  with the Go client is bound by the client, which verifies every digest as it
  reads; registryd reads and writes blobs (on loopback that beat
  sendfile(2): docs/registryd.md) and spends little CPU on them. Manifest GETs by tag read the tag object on every request in standalone
  mode (bucket tag store: it may be rewritten by any replica, so it is never
  cached); in kubernetes mode the tag comes from the informer cache.
- **S3 (workload 8)**: both on the versitygw bucket of workload 7 (versitygw's
  posix backend on the same disk), each round in a fresh prefix: registryd
  through gocloud's s3blob (` + "`--storage s3://…`" + `), distribution through its
  s3-aws driver (path style, the same endpoint and credentials). Redirects on:
  registryd ` + "`--redirect-ttl 5m`" + `, distribution ` + "`redirect.disable: false`" + `; both
  then answer a blob GET with a redirect to a URL versitygw checks the
  signature of, and the bytes come from versitygw (checked before the
  figures: the GET must answer 307 or 302).
- Peak RSS is VmHWM from /proc/PID/status: after the push, and after push + pull.
- Kubernetes mode: registryd started by hack/dev (what ` + "`make dev`" + ` runs) against
  a real kube-apiserver and etcd, measured over HTTP; registryd's own count of
  the requests it sends to the API server (` + "`stevedore_kube_api_requests_total`" + `)
  must not move during the GET load. Then the tag-store Go benchmarks, whose
  read path count (the store's live reads) is asserted to be 0.

`
