// Command fakecri serves a CRI runtime and image service that only pretends to run containers
// (k8s.io/cri-client's fake remote runtime) on a unix socket: kubelet's volume manager still
// mounts every volume through the CSI driver exactly as on a real node.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cri-client/pkg/fake"
)

func main() {
	socket := flag.String("socket", "", "unix socket to serve the CRI on")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "fakecri: --socket is required")
		os.Exit(2)
	}
	_ = os.Remove(*socket)
	runtime := fake.NewFakeRemoteRuntime()
	// kubelet refuses a pulled image without a size.
	runtime.ImageService.SetFakeImageSize(1 << 20)
	if err := runtime.Start("unix://" + *socket); err != nil {
		fmt.Fprintf(os.Stderr, "fakecri: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "fakecri: serving %s\n", *socket)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	runtime.Stop()
	_ = os.Remove(*socket)
}
