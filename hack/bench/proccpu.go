package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc CPU times on Linux.
const clockTick = 100

// statFields are the fields of /proc/PID/stat after the command name,
// which is in parentheses and may hold spaces: f[0] is field 3 (state),
// f[1] field 4 (parent), f[11] and f[12] fields 14 and 15 (utime, stime);
// nil when it cannot be read.
func statFields(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// procCPU is the user+system CPU a process has used (/proc/PID/stat), 0
// when it cannot be read.
func procCPU(pid int) time.Duration {
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / clockTick
}

// pidsNamed lists the processes whose command name is name.
func pidsNamed(name string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(comm)) == name {
			out = append(out, pid)
		}
	}
	return out
}

// cpuOfAll sums procCPU over pids.
func cpuOfAll(pids []int) time.Duration {
	var t time.Duration
	for _, p := range pids {
		t += procCPU(p)
	}
	return t
}

// childrenNamed lists the processes named name whose parent is ppid: the
// kube-apiserver and etcd that one hack/dev started, not another's.
func childrenNamed(ppid int, name string) []int {
	var out []int
	for _, pid := range pidsNamed(name) {
		if f := statFields(pid); len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}
