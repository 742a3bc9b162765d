//go:build tools

// Package plugins pins the upstream provider plugins the differential tests compare the
// built-in providers with; only their commands are built (scripts/cluster-build), nothing
// here is imported. A module of its own, so their dependencies move neither Kubernetes' nor
// the emulators'.
package plugins

import (
	_ "github.com/Azure/secrets-store-csi-driver-provider-azure/cmd"
)
