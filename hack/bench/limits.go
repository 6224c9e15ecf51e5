package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The machine's own limits, measured in the same run so that every figure
// can be read as a fraction of what the hardware allows.

// sha256Limit is one core hashing an in-memory buffer: the ceiling for a
// push, which the server must hash end to end.
func sha256Limit(total int64) (float64, error) {
	buf := make([]byte, 4<<20)
	randomBytes(7, buf)
	h := sha256.New()
	start := time.Now()
	for n := int64(0); n < total; n += int64(len(buf)) {
		h.Write(buf)
	}
	return mbps(total, time.Since(start)), nil
}

// diskWriteLimit writes total bytes into a file in dir in 1 MiB writes and
// waits for fsync: what the disk takes when asked to persist (as
// distribution's filesystem driver asks; fileblob does not).
func diskWriteLimit(dir string, total int64, sync bool) (float64, error) {
	f, done, err := limitFile(dir)
	if err != nil {
		return 0, err
	}
	defer done()
	start := time.Now()
	if err := writeFile(f, 8, total, false, sync); err != nil {
		return 0, err
	}
	return mbps(total, time.Since(start)), nil
}

// durablePushLimit writes n files of size bytes at once, each in 1 MiB
// writes whose pages are sent to the disk every 2 MiB as they are written
// (sync_file_range, as registryd does) and fsynced at its end: the disk's
// ceiling for a push of that image with durable commits. registryd also
// flushes a file every 16 MiB as it fills, which spreads the device's
// cache flush out and can beat this row on a disk whose flush costs what
// is pending (docs/registryd.md); it has not here.
func durablePushLimit(dir string, n int, size int64) (float64, error) {
	files := make([]*os.File, n)
	for i := range files {
		f, done, err := limitFile(dir)
		if err != nil {
			return 0, err
		}
		defer done()
		files[i] = f
	}
	errs := make(chan error, n)
	start := time.Now()
	for i, f := range files {
		go func() { errs <- writeFile(f, uint64(10+i), size, true, true) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return mbps(int64(n)*size, time.Since(start)), first
}

// limitFile is a new file in dir for a disk limit; done closes and removes it.
func limitFile(dir string) (f *os.File, done func(), err error) {
	f, err = os.CreateTemp(dir, "disk-limit-")
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close(); os.Remove(f.Name()) }, nil
}

// writeFile writes size bytes (a whole number of MiB) of random content
// to f in 1 MiB writes; with writeBack, each 2 MiB is sent to the disk as
// soon as it is written (sync_file_range), with sync, f is fsynced last.
func writeFile(f *os.File, seed uint64, size int64, writeBack, sync bool) error {
	buf := make([]byte, 1<<20)
	randomBytes(seed, buf)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			return err
		}
		if end := off + int64(len(buf)); writeBack && end%(2<<20) == 0 {
			_ = unix.SyncFileRange(int(f.Fd()), end-(2<<20), 2<<20, unix.SYNC_FILE_RANGE_WRITE)
		}
	}
	if sync {
		return f.Sync()
	}
	return nil
}

// loopbackLimit sends total bytes over one loopback TCP connection to a
// reader that discards them.
func loopbackLimit(ctx context.Context, total int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(io.Discard, c)
		done <- err
	}()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for n := int64(0); n < total; n += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, err
		}
	}
	c.Close()
	if err := <-done; err != nil {
		return 0, err
	}
	return mbps(total, time.Since(start)), nil
}

// measureLimits measures each limit once; the loopback figure comes last
// (workload 1 reads it there).
func measureLimits(ctx context.Context, workDir string, layers int, layerBytes int64) (*table, error) {
	t := &table{title: "Machine limits (same run)"}
	sha, err := sha256Limit(1 << 30)
	if err != nil {
		return nil, err
	}
	t.limit("Go sha256, one core", "MB/s", sha)
	dw, err := diskWriteLimit(workDir, 1<<30, true)
	if err != nil {
		return nil, fmt.Errorf("disk write: %w", err)
	}
	t.limit("disk write 1 GiB + fsync", "MB/s", dw)
	pc, err := diskWriteLimit(workDir, 1<<30, false)
	if err != nil {
		return nil, fmt.Errorf("disk write: %w", err)
	}
	t.limit("disk write 1 GiB, no fsync (page cache)", "MB/s", pc)
	dp, err := durablePushLimit(workDir, layers, layerBytes)
	if err != nil {
		return nil, fmt.Errorf("disk write: %w", err)
	}
	t.limit(fmt.Sprintf("disk write of %d × %d MiB at once, sent to the disk as written, then fsync (a durable push's ceiling on this disk)", layers, layerBytes>>20), "MB/s", dp)
	lo, err := loopbackLimit(ctx, 4<<30)
	if err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	t.limit("loopback TCP, one connection", "MB/s", lo)
	return t, nil
}

func mbps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / 1e6 / d.Seconds()
}
