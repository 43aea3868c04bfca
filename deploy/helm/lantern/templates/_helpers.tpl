{{- define "lantern.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lantern.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lantern.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lantern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels for one component: include "lantern.selector" (list . "api") */}}
{{- define "lantern.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "lantern.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "lantern.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "lantern.fullname" .) -}}
{{- end -}}

{{- define "lantern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "lantern.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "lantern.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $img.repository ($img.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{/* settings for every Lantern container: the ConfigMap and the Secret */}}
{{- define "lantern.envFrom" -}}
- configMapRef:
    name: {{ include "lantern.fullname" . }}
- secretRef:
    name: {{ include "lantern.secretName" . }}
{{- end -}}

{{- define "lantern.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir:
    sizeLimit: {{ . }}
{{- end -}}

{{- define "lantern.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/lantern
{{- end -}}

{{- define "lantern.workerQueuesCpu" -}}
{{- if .Values.workerCpu.queues -}}
{{- .Values.workerCpu.queues -}}
{{- else if .Values.workerGpu.enabled -}}
{{- .Values.settings.LANTERN_CPU_QUEUE -}}
{{- else -}}
{{- printf "%s,%s" .Values.settings.LANTERN_JOB_QUEUE .Values.settings.LANTERN_CPU_QUEUE -}}
{{- end -}}
{{- end -}}

{{- define "lantern.checks" -}}
{{- $soft := int (index .Values.settings "LANTERN_SOFT_TIME_LIMIT") -}}
{{- if lt (int .Values.workerGpu.terminationGracePeriodSeconds) $soft -}}
{{- fail (printf "workerGpu.terminationGracePeriodSeconds (%v) must be at least LANTERN_SOFT_TIME_LIMIT (%v): a worker stopping must be able to finish its job" .Values.workerGpu.terminationGracePeriodSeconds $soft) -}}
{{- end -}}
{{- if lt (int .Values.workerCpu.terminationGracePeriodSeconds) $soft -}}
{{- fail (printf "workerCpu.terminationGracePeriodSeconds (%v) must be at least LANTERN_SOFT_TIME_LIMIT (%v)" .Values.workerCpu.terminationGracePeriodSeconds $soft) -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.databaseUrl) -}}
{{- fail "set secrets.existingSecret, or secrets.databaseUrl and secrets.brokerUrl" -}}
{{- end -}}
{{- end -}}
