{{/* The chart's name. */}}
{{- define "sscsi.name" -}}
{{- default "secrets-store-csi-driver" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the DaemonSet and Service, as upstream's chart names them so that `helm upgrade`
     over an upstream release keeps its DaemonSet: the release name when it contains the
     chart's name, else `<release>-<name>`. */}}
{{- define "sscsi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sscsi.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* additionalProvidersDirs without repeats and without providersDir, each mounted once. */}}
{{- define "sscsi.additionalProvidersDirs" -}}
{{- $dirs := list -}}
{{- range .Values.linux.additionalProvidersDirs -}}
{{- if and (ne . $.Values.linux.providersDir) (not (has . $dirs)) -}}
{{- $dirs = append $dirs . -}}
{{- end -}}
{{- end -}}
{{- toJson $dirs -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sscsi.labels" -}}
{{ include "sscsi.releaseLabels" . }}
app: {{ .Values.linux.appLabel }}
{{- end -}}

{{/* The release's labels without `app` (the sync controller's pods have an `app` of their
     own, so that the DaemonSet's selector never matches them). */}}
{{- define "sscsi.releaseLabels" -}}
app.kubernetes.io/name: {{ include "sscsi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the driver pods: upstream's, so an upgrade keeps the DaemonSet. */}}
{{- define "sscsi.selectorLabels" -}}
app: {{ .Values.linux.appLabel }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "sscsi.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end -}}

{{/* The built-in providers' flags, shared by the node plugin and the sync controller. */}}
{{- define "sscsi.providerArgs" -}}
{{- $builtins := list }}
{{- if .Values.vault.enabled }}{{ $builtins = append $builtins "vault" }}{{ end }}
{{- if .Values.aws.enabled }}{{ $builtins = append $builtins "aws" }}{{ end }}
{{- if .Values.gcp.enabled }}{{ $builtins = append $builtins "gcp" }}{{ end }}
{{- if .Values.azure.enabled }}{{ $builtins = append $builtins "azure" }}{{ end }}
- --builtin-providers={{ join "," $builtins }}
{{- if .Values.vault.enabled }}
{{- with .Values.vault.address }}
- --vault-address={{ . }}
{{- end }}
- --vault-mount={{ .Values.vault.authMount }}
{{- with .Values.vault.namespace }}
- --vault-namespace={{ . }}
{{- end }}
{{- if .Values.vault.tls.caConfigMap }}
- --vault-tls-ca-cert=/etc/secrets-store-csi-driver/vault-ca/ca.crt
{{- end }}
{{- with .Values.vault.tls.serverName }}
- --vault-tls-server-name={{ . }}
{{- end }}
{{- $tlsDirs := .Values.vault.tls.allowedDirs }}
{{- if .Values.vault.tls.caConfigMap }}{{ $tlsDirs = append $tlsDirs "/etc/secrets-store-csi-driver/vault-ca" }}{{ end }}
{{- with $tlsDirs }}
- --vault-tls-allowed-dirs={{ join "," . }}
{{- end }}
{{- if .Values.vault.tls.skipVerify }}
- --vault-tls-skip-verify=true
{{- end }}
- --vault-read-cache-ttl={{ .Values.vault.readCacheTTL }}
- --vault-concurrency={{ .Values.vault.concurrency }}
- --vault-cache-size={{ .Values.vault.cacheSize }}
- --vault-renew-leases={{ .Values.vault.renewLeases }}
- --vault-revoke-leases={{ .Values.vault.revokeLeases }}
{{- end }}
{{- if .Values.aws.enabled }}
{{- with .Values.aws.region }}
- --aws-region={{ . }}
{{- end }}
{{- with .Values.aws.endpointURL }}
- --aws-endpoint-url={{ . }}
{{- end }}
{{- if .Values.aws.useFIPSEndpoint }}
- --aws-use-fips-endpoint=true
{{- end }}
{{- with .Values.aws.podIdentityEndpoint }}
- --aws-pod-identity-endpoint={{ . }}
{{- end }}
- --aws-call-timeout={{ .Values.aws.callTimeout }}
- --aws-read-cache-ttl={{ .Values.aws.readCacheTTL }}
- --aws-concurrency={{ .Values.aws.concurrency }}
- --aws-cache-size={{ .Values.aws.cacheSize }}
{{- end }}
{{- if .Values.gcp.enabled }}
{{- with .Values.gcp.project }}
- --gcp-project={{ . }}
{{- end }}
{{- with .Values.gcp.clusterLocation }}
- --gcp-cluster-location={{ . }}
{{- end }}
{{- with .Values.gcp.clusterName }}
- --gcp-cluster-name={{ . }}
{{- end }}
{{- with .Values.gcp.workloadIdentityAudience }}
- --gcp-workload-identity-audience={{ . }}
{{- end }}
{{- with .Values.gcp.secretManagerEndpoint }}
- --gcp-secret-manager-endpoint={{ . }}
{{- end }}
{{- with .Values.gcp.regionalSecretManagerEndpoint }}
- --gcp-regional-secret-manager-endpoint={{ . }}
{{- end }}
- --gcp-read-cache-ttl={{ .Values.gcp.readCacheTTL }}
- --gcp-concurrency={{ .Values.gcp.concurrency }}
- --gcp-cache-size={{ .Values.gcp.cacheSize }}
{{- end }}
{{- if .Values.azure.enabled }}
- --azure-cloud-name={{ .Values.azure.cloudName }}
{{- with .Values.azure.authorityHost }}
- --azure-authority-host={{ . }}
{{- end }}
{{- with .Values.azure.keyvaultEndpoint }}
- --azure-keyvault-endpoint={{ . }}
{{- end }}
{{- if .Values.azure.writeCertAndKeyInSeparateFiles }}
- --azure-write-cert-and-key-in-separate-files=true
{{- end }}
- --azure-read-cache-ttl={{ .Values.azure.readCacheTTL }}
- --azure-concurrency={{ .Values.azure.concurrency }}
- --azure-cache-size={{ .Values.azure.cacheSize }}
{{- end }}
{{- end -}}
