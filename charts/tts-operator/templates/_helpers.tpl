{{/* Names: the release's full name, capped at 63 characters (DNS label). */}}
{{- define "tts-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tts-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tts-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tts-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tts-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tts-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tts-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tts-operator.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) -}}
{{- end -}}

{{/*
The operator's rights in a namespace it watches: exact verbs per resource, each one for a call the
operator makes (operator/tts_operator/kube.py) or a watch kopf runs for a handler. No wildcards, no
Secrets. tests/chart/test_rbac.py checks every rule against that list and proves the set is enough by
running the operator with this ServiceAccount's token.
*/}}
{{- define "tts-operator.namespacedRules" -}}
# TrainingRuns: kopf's watch (list, watch); reconciles read a run (get), a VoiceModel reads its source
# run's output
- apiGroups: ["tts-operator.dev"]
  resources: ["trainingruns"]
  verbs: ["get", "list", "watch"]
# status written by the operator (patch); get is held so the operator may create each run's Role,
# which grants the trainer get/patch on its own run's status (RBAC allows granting only what one holds)
- apiGroups: ["tts-operator.dev"]
  resources: ["trainingruns/status"]
  verbs: ["get", "patch"]
# VoiceModels: kopf's watch, reconcile (get), the slow resync (list), promote mode Direct patches the
# target's spec
- apiGroups: ["tts-operator.dev"]
  resources: ["voicemodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tts-operator.dev"]
  resources: ["voicemodels/status"]
  verbs: ["patch"]
# a run's trainer identity (ServiceAccount, Role, RoleBinding), created once; when one already exists
# its owner is checked (get) and one left by an earlier run of the same name is replaced (delete). No
# ConfigMaps: the run and serve specs ride on the pod templates (downward API)
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "get", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "get", "delete"]
# training and export Jobs: created, read, suspended/resumed (patch), watched by kopf, and replaced
# (delete) when one left by an earlier run of the same name is found
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "patch", "delete", "list", "watch"]
# serving: the Deployment, Service and PodDisruptionBudget of each VoiceModel, server-side applied
# (create + patch) unless a read (get) shows nothing to change, removed (delete); kopf watches the
# Deployments (list, watch)
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "get", "patch", "delete", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "get", "patch", "delete"]
# an HPA scaling a VoiceModel's Deployment owns its replicas (list, to leave them alone)
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
# pods of both: kopf's watch, the reconcile's list (failure reasons, termination messages, versions),
# and an annotation recording the model version a serving pod has loaded (patch)
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# a multi-replica VoiceModel's model claim: its access modes (a ReadWriteOnce claim serves one node)
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# an Event per transition (kubectl describe)
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- with .Values.rbac.authSecretNames }}
# VoiceModel auth tokens (spec.server.authSecretRef), by name only: the operator calls its pods' API
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end -}}
