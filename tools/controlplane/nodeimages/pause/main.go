// Command pause is a pod's sandbox process: it holds the pod's namespaces until it is told to stop, as
// upstream's kubernetes/build/pause does (which is C; no registry is reachable here to pull its image).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
