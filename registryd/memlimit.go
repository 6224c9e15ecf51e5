package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// softMemoryLimit sets the Go runtime's soft memory limit to 90 % of the
// container's cgroup memory limit, unless GOMEMLIMIT is set. Without one the
// heap may grow to twice what is live (GOGC=100) before a collection, and
// the kernel kills the pod at its limit where a collection would have kept
// it under: a cache of 100,000 tags is about 50 MiB live, and the initial
// list of it a spike on top. The 10 % left is for what is not heap
// (goroutine stacks, buffers the kernel charges to the cgroup).
func softMemoryLimit(log *slog.Logger, cgroupRoot string) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit, ok := cgroupMemoryLimit(cgroupRoot)
	if !ok {
		return
	}
	soft := limit / 10 * 9
	debug.SetMemoryLimit(soft)
	log.Info("soft memory limit set from the container's", "cgroupLimitBytes", limit, "softLimitBytes", soft)
}

// cgroupMemoryLimit reads the memory limit of the cgroup mounted at root
// (v2: memory.max; v1: memory/memory.limit_in_bytes); false when there is
// none ("max", or v1's page-rounded maximum) or it cannot be read.
func cgroupMemoryLimit(root string) (int64, bool) {
	for _, name := range []string{"memory.max", filepath.Join("memory", "memory.limit_in_bytes")} {
		raw, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<62 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}
