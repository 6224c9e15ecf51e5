package storageservers

import (
	"os/exec"
	"syscall"
)

// dieWithParent kills the server when the process that started it dies,
// however it dies: a crashed or killed test must not leave servers behind
// on a shared CI machine.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
