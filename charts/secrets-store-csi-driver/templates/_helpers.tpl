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
