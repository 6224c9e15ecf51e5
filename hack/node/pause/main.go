// Command pause is the real node's pod sandbox image: no registry is
// reachable from our machines, so containerd's sandbox_image is this static
// program, which sleeps until SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
