{{/* The chart's name. */}}
{{- define "sscsi.name" -}}
{{- default "secrets-store-csi-driver" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the DaemonSet and Service: the release name unless overridden. */}}
{{- define "sscsi.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sscsi.labels" -}}
app.kubernetes.io/name: {{ include "sscsi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app: {{ .Values.linux.appLabel }}
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
