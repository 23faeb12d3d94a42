// The pause program: the process that holds a pod's namespaces on the real node.
// No image registry is reachable here, so the sandbox image is built locally from this
// (e2e/images.py); like Kubernetes' own pause, it waits for SIGTERM or SIGINT and exits 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1 of the sandbox it also reaps any orphan that ends up in it.
	signal.Ignore(syscall.SIGCHLD)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
