{{/* The name prefix of every object: the release name. */}}
{{- define "shardctl.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component; call with (list $ "coordinator"). */}}
{{- define "shardctl.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: shardctl
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "shardctl.labels" -}}
{{ include "shardctl.selector" . }}
app.kubernetes.io/version: {{ (index . 0).Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" (index . 0).Chart.Name (index . 0).Chart.Version }}
{{- end -}}

{{- define "shardctl.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* The container parts every role shares: image, settings, security, secret files. */}}
{{- define "shardctl.containerCommon" -}}
image: {{ include "shardctl.image" . }}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
envFrom:
  - configMapRef: {name: {{ include "shardctl.fullname" . }}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - {name: secrets, mountPath: /etc/shardctl/secrets, readOnly: true}
  - {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "shardctl.serving" -}}
ports:
  - {name: metrics, containerPort: {{ .Values.metricsPort }}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}

{{- define "shardctl.volumes" -}}
volumes:
  - name: secrets
    secret: {secretName: {{ .Values.secrets.name }}, defaultMode: 0400}
  - name: tmp
    emptyDir: {}
{{- end -}}

{{/* Leader and standby on different nodes (and zones when there are several): one
node failure never takes both. Call with (list $ "coordinator"). */}}
{{- define "shardctl.spreadPair" -}}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector:
          matchLabels:
            {{- include "shardctl.selector" . | nindent 12 }}
        topologyKey: kubernetes.io/hostname
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "shardctl.selector" . | nindent 8 }}
{{- end -}}
