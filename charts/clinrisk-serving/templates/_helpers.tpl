{{/* Common labels. */}}
{{- define "clinrisk-serving.labels" -}}
app.kubernetes.io/name: clinrisk-serving
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: clinrisk
clinrisk.io/usecase: {{ .Values.usecase | quote }}
{{- end -}}

{{/* The platform's names of each use case the serving image serves (clinrisk.usecases: UseCaseNames;
tests/k8s/test_manifests.py checks this table against the use case registry). */}}
{{- define "clinrisk-serving.usecaseNames" -}}
clinical: {modelName: clinrisk, namespace: clinrisk}
leads: {modelName: leads, namespace: leads}
{{- end }}

{{/* The use case's entry of that table; fails on a use case the serving image does not serve. */}}
{{- define "clinrisk-serving.usecase" -}}
{{- $table := include "clinrisk-serving.usecaseNames" . | fromYaml -}}
{{- $names := get $table .Values.usecase -}}
{{- if not $names -}}
{{- fail (printf "usecase %q: not served by this chart (known: %s)" .Values.usecase (keys $table | sortAlpha | join ", ")) -}}
{{- end -}}
{{- toYaml $names -}}
{{- end }}

{{/* KServe model name = InferenceService name: .Values.name, else the use case's model name. */}}
{{- define "clinrisk-serving.name" -}}
{{- .Values.name | default (include "clinrisk-serving.usecase" . | fromYaml).modelName -}}
{{- end }}

{{/* Namespace of every object: .Values.namespace, else the release's. */}}
{{- define "clinrisk-serving.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end }}

{{/* Secret holding the predictor's bearer token (auth.existingSecret, else one the chart creates). */}}
{{- define "clinrisk-serving.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-serving-auth" (include "clinrisk-serving.name" .)) -}}
{{- end }}
