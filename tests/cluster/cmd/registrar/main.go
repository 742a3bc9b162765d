// Command registrar registers a CSI driver's socket with kubelet through kubelet's plugin
// registration directory, as node-driver-registrar does in the driver's DaemonSet
// (node-driver-registrar's v2 tags are not valid Go module versions, so the module proxy does
// not serve it). It answers kubelet's GetInfo and NotifyRegistrationStatus and nothing else.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	registration.UnimplementedRegistrationServer
	name     string
	endpoint string
}

func (s *server) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              s.name,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, status *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		fmt.Fprintf(os.Stderr, "registrar: kubelet registered %s at %s\n", s.name, s.endpoint)
	} else {
		fmt.Fprintf(os.Stderr, "registrar: kubelet refused %s: %s\n", s.name, status.Error)
	}
	return &registration.RegistrationStatusResponse{}, nil
}

func main() {
	name := flag.String("driver-name", "secrets-store.csi.k8s.io", "CSI driver name")
	endpoint := flag.String("kubelet-registration-path", "", "the driver's CSI socket, as kubelet reaches it")
	dir := flag.String("plugin-registration-dir", "", "kubelet's plugins_registry directory")
	flag.Parse()
	if *endpoint == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "registrar: --kubelet-registration-path and --plugin-registration-dir are required")
		os.Exit(2)
	}
	socket := filepath.Join(*dir, *name+"-reg.sock")
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "registrar: %v\n", err)
		os.Exit(1)
	}
	grpcServer := grpc.NewServer()
	registration.RegisterRegistrationServer(grpcServer, &server{name: *name, endpoint: *endpoint})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		grpcServer.Stop()
	}()
	fmt.Fprintf(os.Stderr, "registrar: serving %s\n", socket)
	_ = grpcServer.Serve(listener)
	_ = os.Remove(socket)
}
