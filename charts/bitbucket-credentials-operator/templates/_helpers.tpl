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
{{- /*
Exactly the verbs the operator uses (docs/install.md has the table of why). No `update`
anywhere: every write is a PATCH (server-side apply, merge or JSON patch). No /finalizers:
the owner references on Secrets do not set blockOwnerDeletion.
*/}}
{{- define "bco.rules.namespacedResources" -}}
# Access keys: watched; read fresh before a rotation; finalizer added and removed (JSON patch).
# Workspaces: watched; read when a cache misses; in-use finalizer (patch).
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketaccesskeys", "bitbucketworkspaces"]
  verbs: ["get", "list", "watch", "patch"]
# OAuth consumers: watched, and read fresh before a token is minted while the Secret holds
# one; the operator writes nothing but their status.
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketoauthconsumers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["bitbucketworkspaces/status", "bitbucketaccesskeys/status", "bitbucketoauthconsumers/status"]
  verbs: ["patch"]
{{- end }}

{{- define "bco.rules.clusterResources" -}}
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["clusterbitbucketworkspaces"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["bitbucket.credentials.dev"]
  resources: ["clusterbitbucketworkspaces/status"]
  verbs: ["patch"]
# allowedNamespaces.selector: the labels of the one namespace that asks (GET, never a list).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end }}

{{- define "bco.rules.secretsReadWrite" -}}
# Watched as metadata (list, watch) and read (get); written by server-side apply, which
# needs create for a new Secret, and by merge patch (patch); an OAuth consumer's Secret
# whose layout changes type is deleted and written again (delete).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}

{{- define "bco.rules.events" -}}
# kube-runtime's Recorder: events.k8s.io/v1 only; a repeated event is patched (series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
