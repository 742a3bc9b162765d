//go:build tools

// Package plugins pins the upstream GCP provider plugin the differential tests compare the
// built-in gcp provider with; only its command is built (scripts/cluster-build). A module of
// its own, so its dependencies move no other component's.
package plugins

import (
	_ "github.com/GoogleCloudPlatform/secrets-store-csi-driver-provider-gcp"
)
