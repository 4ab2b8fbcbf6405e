{{- define "kmseal.name" -}}kmseal-controller{{- end -}}

{{- define "kmseal.serviceAccountName" -}}
{{- default (include "kmseal.name" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kmseal.labels" -}}
app.kubernetes.io/name: kmseal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "kmseal.selectorLabels" -}}
app.kubernetes.io/name: kmseal
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
