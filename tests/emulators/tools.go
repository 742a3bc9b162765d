//go:build tools

// Package emulators pins the cloud API emulators the provider tests run against; only their
// commands are built (scripts/cluster-build), nothing here is imported.
package emulators

import (
	_ "github.com/blackwell-systems/gcp-secret-manager-emulator/cmd/server"
)
