{{/* Common labels. */}}
{{- define "clinrisk-serving.labels" -}}
app.kubernetes.io/name: clinrisk-serving
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: clinrisk
{{- end -}}

{{/* Secret holding the predictor's bearer token (auth.existingSecret, else one the chart creates). */}}
{{- define "clinrisk-serving.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-serving-auth" .Values.name) -}}
{{- end }}
