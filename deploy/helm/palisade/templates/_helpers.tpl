{{/* The image reference: registry/repository, then @digest or :tag (appVersion by default). */}}
{{- define "palisade.image" -}}
{{- $repo := printf "%s/%s" .Values.image.registry .Values.image.repository | trimPrefix "/" -}}
{{- if .Values.image.digest -}}
{{ $repo }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repo }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "palisade.labels" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The agent's read rules, shared by the controller (it reads the desired state through the agent's source). */}}
{{- define "palisade.readRules" -}}
- apiGroups: [""]
  resources: [namespaces, pods, nodes, services, serviceaccounts]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch]
- apiGroups: [policy.networking.k8s.io]
  resources: [clusternetworkpolicies, adminnetworkpolicies, baselineadminnetworkpolicies]
  verbs: [list, watch]
- apiGroups: [projectcalico.org, crd.projectcalico.org]
  resources: [networkpolicies, globalnetworkpolicies, networksets, globalnetworksets]
  verbs: [list, watch]
{{- end -}}
