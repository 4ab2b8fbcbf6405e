{{/* The chart's name, for labels. */}}
{{- define "kmseal.name" -}}
{{- default "kmseal" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaced resources: <release>-kmseal, or the release name when it already says kmseal.
Two releases (the --selector sharding) never share a name. */}}
{{- define "kmseal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kmseal.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped resources also carry the release namespace: the same release name in two
namespaces must not collide. */}}
{{- define "kmseal.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kmseal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kmseal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kmseal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount the controller runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kmseal.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "kmseal.labels" -}}
{{ include "kmseal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kmseal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmseal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* What the controller does in the namespaces it serves; the same rules whether granted
cluster-wide or per namespace. */}}
{{- define "kmseal.rules" -}}
# patch: key rotation re-wraps values of spec.encryptedData in place (rotationPolicy rewrap).
- apiGroups: ["kmseal.dev"]
  resources: ["encryptedsecrets"]
  verbs: {{ if eq .Values.controller.rotationPolicy "report" }}["get", "list", "watch"]{{ else }}["get", "list", "watch", "patch"]{{ end }}
- apiGroups: ["kmseal.dev"]
  resources: ["encryptedsecrets/status"]
  verbs: ["get", "patch"]
# Secrets are listed and watched as metadata only (and filtered by label); get is for the
# ownership check of a Secret that is not yet managed. A Secret is created (never upserted)
# and replaced whole with a resourceVersion precondition (update); it is never patched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.tenantIdentity.enabled }}
# Per-tenant identity: a ServiceAccount's role annotation, and a short token of it for STS.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- end -}}

{{/* How the webhook gets its certificate: certManager, secret (one's own), or self (the
controller makes and keeps its own, the default). */}}
{{- define "kmseal.webhookMode" -}}
{{- if .Values.webhook.certManager.enabled -}}certManager
{{- else if .Values.webhook.secretName -}}secret
{{- else -}}self
{{- end -}}
{{- end -}}

{{/* The webhook's certificate Secret: the one given, else <fullname>-webhook-tls. */}}
{{- define "kmseal.webhookSecret" -}}
{{- default (printf "%s-webhook-tls" (include "kmseal.fullname" .)) .Values.webhook.secretName -}}
{{- end -}}

{{- define "kmseal.webhookService" -}}
{{- printf "%s-webhook" (include "kmseal.fullname" .) -}}
{{- end -}}
