{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "slimserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "slimserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slimserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slimserve.labels" -}}
helm.sh/chart: {{ include "slimserve.chart" . }}
{{ include "slimserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slimserve
{{- end }}

{{- define "slimserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slimserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slimserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slimserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slimserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* SLIMSERVE_MODELS: the manifest the server loads. */}}
{{- define "slimserve.modelsPath" -}}
{{- if eq .Values.models.source "volume" }}
{{- if .Values.models.volume.manifest }}
{{- print "/etc/slimserve/manifest/variants.toml" }}
{{- else }}
{{- .Values.models.volume.mountPath }}
{{- end }}
{{- else }}
{{- .Values.models.imagePath }}
{{- end }}
{{- end }}

{{- define "slimserve.terminationGracePeriodSeconds" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- $pre := ternary 0 (int .Values.lifecycle.preStopSleepSeconds) (eq .Values.lifecycle.preStop "none") }}
{{- add $pre (int .Values.config.shutdownTimeoutSecs) 5 }}
{{- end }}
{{- end }}

{{/* Checks of value combinations the schema cannot express. */}}
{{- define "slimserve.validate" -}}
{{- if and (eq .Values.models.source "volume") (not .Values.models.volume.claimName) }}
{{- fail "models.source=volume needs models.volume.claimName" }}
{{- end }}
{{- if and .Values.probes.grpcReadiness (not .Values.grpc.enabled) }}
{{- fail "probes.grpcReadiness needs grpc.enabled" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.queueTime.enabled) (not .Values.autoscaling.slaMissRatio.enabled) }}
{{- fail "autoscaling.enabled needs at least one metric: targetCPUUtilizationPercentage, queueTime or slaMissRatio" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled .Values.podDisruptionBudget.minAvailable .Values.podDisruptionBudget.maxUnavailable }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- end }}
