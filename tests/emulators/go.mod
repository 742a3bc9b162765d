module github.com/secrets-store-csi-driver-rs/tests/emulators

go 1.25.0

require github.com/blackwell-systems/gcp-secret-manager-emulator v0.1.0

require (
	cloud.google.com/go/iam v1.5.2 // indirect
	cloud.google.com/go/secretmanager v1.16.0 // indirect
	golang.org/x/net v0.47.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
	golang.org/x/text v0.31.0 // indirect
	google.golang.org/genproto v0.0.0-20250603155806-513f23925822 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20251022142026-3a174f9686a8 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20251124214823-79d6a2a48846 // indirect
	google.golang.org/grpc v1.77.0 // indirect
	google.golang.org/protobuf v1.36.10 // indirect
)
