{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "bco.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or <release> when the release name already contains the
chart name (so `helm install bitbucket-credentials-operator .` does not repeat itself).
*/}}
{{- define "bco.fullname" -}}
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

{{- define "bco.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "bco.labels" -}}
helm.sh/chart: {{ include "bco.chart" . }}
{{ include "bco.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: bitbucket-credentials-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "bco.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bco.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bco.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bco.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bco.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Namespace the auth Secrets of ClusterBitbucketWorkspace objects are read from.
*/}}
{{- define "bco.clusterResourceNamespace" -}}
{{- default .Release.Namespace .Values.clusterResourceNamespace }}
{{- end }}

{{/*
"true" when the operator serves only the namespaces in watchNamespaces.
*/}}
{{- define "bco.namespaced" -}}
{{- if gt (len .Values.watchNamespaces) 0 }}true{{ end }}
{{- end }}

{{/*
The Lease the binary uses for leader election; its name is fixed in the binary.
*/}}
{{- define "bco.leaseName" -}}
bitbucket-credentials-operator
{{- end }}

{{/*
RBAC rules on the namespaced custom resources (objects, status, finalizers).
*/}}
{{- define "bco.rules.namespacedResources" -}}
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketworkspaces", "bitbucketaccesskeys", "bitbucketoauthconsumers"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketworkspaces/status", "bitbucketaccesskeys/status", "bitbucketoauthconsumers/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketworkspaces/finalizers", "bitbucketaccesskeys/finalizers", "bitbucketoauthconsumers/finalizers"]
  verbs: ["update"]
{{- end }}

{{- define "bco.rules.clusterResources" -}}
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["clusterbitbucketworkspaces"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["clusterbitbucketworkspaces/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["clusterbitbucketworkspaces/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{- define "bco.rules.secretsReadWrite" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}

{{- define "bco.rules.events" -}}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
