{{/*
_helpers.tpl — names, labels, images, security contexts, the Redis connection
and the queue's names.

The queue's names are defined ONCE here: the gateway (--models), each worker
(--model-name) and each ScaledObject (stream, consumerGroup) take them from
these helpers, so that KEDA always watches the stream the workers consume.
They follow docs/protocol.md: stream `<prefix>req:<model>` (prefix
`queuePrefix`, passed to both binaries as --prefix), consumer group `workers`
(the gateway creates both at start with XGROUP CREATE ... MKSTREAM).
*/}}

{{- define "llmq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "llmq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmq.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "llmq.labels" -}}
{{ include "llmq.selectorLabels" . }}
helm.sh/chart: {{ include "llmq.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: llmq
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Image reference: (dict "root" $ "image" .Values.gateway.image "llmq" true
["suffix" "-cpu"]). Every image of the chart is named here. For llmq's own
images ("llmq" true) an empty tag is the chart's appVersion plus the suffix,
which is how docker/*.Dockerfile's builds are tagged (the worker's
IMAGE_CUDA=0 build is <appVersion>-cpu), and imageRegistry is prepended.
Others (Redis) are used as written.
*/}}
{{- define "llmq.image" -}}
{{- $tag := .image.tag -}}
{{- if and .llmq (not $tag) -}}
{{- $tag = printf "%s%s" .root.Chart.AppVersion (default "" .suffix) -}}
{{- end -}}
{{- $repo := .image.repository -}}
{{- if and .llmq .root.Values.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.imageRegistry) $repo -}}
{{- end -}}
{{- if $tag -}}{{ printf "%s:%s" $repo $tag }}{{- else -}}{{ $repo }}{{- end -}}
{{- end -}}

{{- define "llmq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Pod security context: (dict "root" $ "uid" 10001 "gid" 10001 "fsGroup" 10001).
On OpenShift no IDs are set: restricted-v2 assigns them from the project's
range and rejects pods that ask for others.
*/}}
{{- define "llmq.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- if not .root.Values.openshift.enabled }}
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
{{- end -}}

{{/* Container security context, the same for every container of the chart. */}}
{{- define "llmq.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
"true" when KEDA objects are rendered: keda.enabled and the cluster serves
keda.sh/v1alpha1. Without the CRDs an install would fail on the first
ScaledObject; the groups then keep fixed replicas and NOTES.txt says why.
`helm template` sees no cluster: pass --api-versions keda.sh/v1alpha1.
*/}}
{{- define "llmq.keda.active" -}}
{{- and .Values.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") -}}
{{- end -}}

{{/* ------------------------------------------------------------ queue names */}}

{{/* The consumer group every worker joins (fixed by the protocol). */}}
{{- define "llmq.consumerGroup" -}}workers{{- end -}}

{{/* The request stream of a model: (include "llmq.stream" (dict "root" $ "model" "mistral-7b")) */}}
{{- define "llmq.stream" -}}{{ printf "%sreq:%s" .root.Values.queuePrefix .model }}{{- end -}}

{{/* Comma-separated model names served, for the gateway's --models. */}}
{{- define "llmq.modelNames" -}}
{{- $names := list -}}
{{- range .Values.workerGroups -}}
{{- $names = append $names .modelName -}}
{{- end -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{/* ------------------------------------------------------------ Redis */}}

{{- define "llmq.redis.fullname" -}}{{ include "llmq.fullname" . }}-redis{{- end -}}

{{/* Host of Redis: the bundled Service or the external URL's host. */}}
{{- define "llmq.redis.host" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s.%s.svc" (include "llmq.redis.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- regexReplaceAll "^rediss?://([^:/]+).*$" .Values.redis.external.url "${1}" -}}
{{- end -}}
{{- end -}}

{{- define "llmq.redis.port" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.port -}}
{{- else -}}
{{- $p := regexReplaceAll "^rediss?://[^:/]+:?([0-9]*).*$" .Values.redis.external.url "${1}" -}}
{{- default "6379" $p -}}
{{- end -}}
{{- end -}}

{{/* "true" when the external Redis is found through Sentinel. */}}
{{- define "llmq.redis.sentinel" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.sentinel .Values.redis.external.sentinel.hosts -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "llmq.redis.db" -}}
{{- if .Values.redis.enabled -}}0{{- else if eq (include "llmq.redis.sentinel" .) "true" -}}
{{- int .Values.redis.external.sentinel.db -}}
{{- else -}}
{{- $d := regexReplaceAll "^rediss?://[^/]+/?([0-9]*)$" .Values.redis.external.url "${1}" -}}
{{- default "0" $d -}}
{{- end -}}
{{- end -}}

{{- define "llmq.redis.tls" -}}
{{- if and (not .Values.redis.enabled) (hasPrefix "rediss://" .Values.redis.external.url) (ne (include "llmq.redis.sentinel" .) "true") -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Name and key of the Secret with the Redis password ("" when none). */}}
{{- define "llmq.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- default (include "llmq.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "llmq.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.auth.secretKey }}{{- else -}}{{ .Values.redis.external.secretKey }}{{- end -}}
{{- end -}}

{{/*
The env entry with the password, read from the Secret: the password itself
never appears in a manifest, a URL or a command line (`ps`); llmq-gateway,
llmq-worker and llmq read LLMQ_REDIS_PASSWORD when the URL holds none, so any
character is fine in it. Empty when Redis has no password.
*/}}
{{- define "llmq.redis.passwordEnv" -}}
{{- if include "llmq.redis.secretName" . -}}
- name: LLMQ_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "llmq.redis.secretName" . }}
      key: {{ include "llmq.redis.secretKey" . }}
{{- end }}
{{- end -}}

{{/*
The Redis URL handed to the binaries: no credentials (they come from
LLMQ_REDIS_PASSWORD, above). The binaries speak plain Redis (Debian's
hiredis has no TLS): with rediss:// they talk to the pod's TLS proxy on
127.0.0.1, which carries the connection to the real Redis over TLS.
*/}}
{{- define "llmq.redis.url" -}}
{{- if eq (include "llmq.redis.sentinel" .) "true" -}}
{{- with .Values.redis.external.sentinel -}}
{{- printf "redis-sentinel://%s/%s/%d" (join "," .hosts) .masterName (int .db) -}}
{{- end -}}
{{- else if eq (include "llmq.redis.tls" .) "true" -}}
{{- printf "redis://127.0.0.1:%d/%s" (include "llmq.redis.tlsProxyPort" . | int) (include "llmq.redis.db" .) -}}
{{- else -}}
{{- printf "redis://%s:%s/%s" (include "llmq.redis.host" .) (include "llmq.redis.port" .) (include "llmq.redis.db" .) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------ Redis TLS proxy */}}

{{/* redis.instances: the URL of the instance that carries a model, "" when
the model stays on the main Redis: (include "llmq.redis.instanceUrl" (dict "root" $ "model" NAME)) */}}
{{- define "llmq.redis.instanceUrl" -}}
{{- $url := "" -}}
{{- range .root.Values.redis.instances -}}
{{- if has $.model .models -}}{{- $url = .url -}}{{- end -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* The checks of redis.instances: a model on one instance at most, names unique. */}}
{{- define "llmq.redis.instancesCheck" -}}
{{- $seen := dict -}}
{{- $names := dict -}}
{{- range .Values.redis.instances -}}
{{- if hasKey $names .name -}}{{- fail (printf "redis.instances: the name %s is used twice" .name) -}}{{- end -}}
{{- $_ := set $names .name true -}}
{{- $inst := .name -}}
{{- range .models -}}
{{- if hasKey $seen . -}}{{- fail (printf "redis.instances: model %s is on two instances (%s and %s)" . (get $seen .) $inst) -}}{{- end -}}
{{- $_ := set $seen . $inst -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmq.redis.tlsProxyPort" -}}6380{{- end -}}

{{/*
stunnel's configuration (client mode), the ConfigMap's only key: a local
plain port, the external Redis over TLS, its certificate chain checked
against the CA (the Secret's, or the image's system CAs) and its name
against the URL's host.
*/}}
{{- define "llmq.redis.stunnelConf" -}}
{{- $tls := .Values.redis.external.tls -}}
{{- $host := include "llmq.redis.host" . -}}
; llmq's binaries speak plain Redis to 127.0.0.1; stunnel carries it to
; {{ $host }} over TLS (helm/llmq, redis.external.url rediss://).
foreground = yes
pid =
syslog = no
debug = notice

[redis]
client = yes
accept = 127.0.0.1:{{ include "llmq.redis.tlsProxyPort" . }}
connect = {{ $host }}:{{ include "llmq.redis.port" . }}
; resolve at each connection: the Service or DNS name may move
delay = yes
verifyChain = yes
{{- if regexMatch "^[0-9.]+$" $host }}
; an IP address (Memorystore gives one): the certificate must name it
checkIP = {{ $host }}
{{- else }}
sni = {{ $host }}
checkHost = {{ $host }}
{{- end }}
{{- if $tls.caSecret }}
CAfile = /etc/llmq/redis-tls/ca/{{ $tls.caKey }}
{{- else }}
CAfile = /etc/ssl/certs/ca-certificates.crt
{{- end }}
{{- if $tls.clientSecret }}
cert = /etc/llmq/redis-tls/client/tls.crt
key = /etc/llmq/redis-tls/client/tls.key
{{- end }}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
socket = r:SO_KEEPALIVE=1
; the pub/sub connections may stay quiet for a long time
TIMEOUTidle = 86400
{{ end -}}

{{/*
The TLS proxy sidecar: (dict "root" $ "image" REF "pullPolicy" P).
It runs the pod's own image (stunnel4 is in both), so no image is added.
On termination Kubernetes signals every container at once, but the main
container still needs Redis while it drains (the gateway closes its listener
at SIGTERM, so its port says nothing): the proxy's preStop waits while any
connection to it is established (/proc/net/tcp of the pod's network
namespace, local 127.0.0.1:port, state 01), i.e. until the binary has gone.
*/}}
{{- define "llmq.redis.tlsProxy.container" -}}
{{- $root := .root -}}
{{- $local := printf "0100007F:%04X" (include "llmq.redis.tlsProxyPort" $root | int) -}}
- name: redis-tls-proxy
  image: {{ .image }}
  imagePullPolicy: {{ .pullPolicy }}
  command: ["stunnel", "/etc/llmq/stunnel/stunnel.conf"]
  lifecycle:
    preStop:
      exec:
        command:
          - bash
          - -c
          - {{ printf "while grep -qE '^ *[0-9]+: %s [0-9A-F]{8}:[0-9A-F]{4} 01 ' /proc/net/tcp; do sleep 1; done" $local | quote }}
  securityContext:
    {{- include "llmq.containerSecurityContext" $root | nindent 4 }}
  resources:
    {{- toYaml $root.Values.redis.external.tls.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: redis-tls-config
      mountPath: /etc/llmq/stunnel
      readOnly: true
    {{- if $root.Values.redis.external.tls.caSecret }}
    - name: redis-tls-ca
      mountPath: /etc/llmq/redis-tls/ca
      readOnly: true
    {{- end }}
    {{- if $root.Values.redis.external.tls.clientSecret }}
    - name: redis-tls-client
      mountPath: /etc/llmq/redis-tls/client
      readOnly: true
    {{- end }}
{{- end -}}

{{- define "llmq.redis.tlsProxy.volumes" -}}
{{- $tls := .Values.redis.external.tls -}}
- name: redis-tls-config
  configMap:
    name: {{ include "llmq.redis.fullname" . }}-tls
{{- if $tls.caSecret }}
- name: redis-tls-ca
  secret:
    secretName: {{ $tls.caSecret }}
    defaultMode: 0440
    items:
      - key: {{ $tls.caKey }}
        path: {{ $tls.caKey }}
{{- end }}
{{- if $tls.clientSecret }}
- name: redis-tls-client
  secret:
    secretName: {{ $tls.clientSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------------ worker groups */}}

{{/*
One worker group merged over workerDefaults, as YAML:
  {{- $g := include "llmq.group" (dict "root" $ "group" .) | fromYaml }}
Also checks what the schema cannot express (cross-field rules) and fails the
render with a message naming the group.
*/}}
{{- define "llmq.group" -}}
{{- $g := include "llmq.deepMerge" (dict "base" .root.Values.workerDefaults "over" .group) | fromYaml -}}
{{- $tp := int $g.tp -}}
{{- $nodes := int $g.nodes -}}
{{- if ne (mod $tp $nodes) 0 -}}
{{- fail (printf "workerGroups %s: tp %d must be a multiple of nodes %d (each pod holds tp/nodes GPUs)" $g.name $tp $nodes) -}}
{{- end -}}
{{- with $g.model.numAttentionHeads -}}
{{- if ne (mod (int .) $tp) 0 -}}
{{- fail (printf "workerGroups %s: tp %d does not divide the model's %d attention heads" $g.name $tp (int .)) -}}
{{- end -}}
{{- end -}}
{{- if and (gt $nodes 1) (ne $g.backend "cuda") -}}
{{- fail (printf "workerGroups %s: nodes > 1 needs backend cuda (the CPU communicator is single-host)" $g.name) -}}
{{- end -}}
{{- $probeBudget := int $g.loadTimeoutSeconds -}}
{{- if and $g.autoscaling.enabled (eq (int $g.autoscaling.minReplicas) 0) (le (int $g.autoscaling.cooldownPeriod) $probeBudget) -}}
{{- fail (printf "workerGroups %s: autoscaling.cooldownPeriod %d must exceed loadTimeoutSeconds %d when scaling to zero" $g.name (int $g.autoscaling.cooldownPeriod) $probeBudget) -}}
{{- end -}}
{{- if gt (int $g.autoscaling.minReplicas) (int $g.autoscaling.maxReplicas) -}}
{{- fail (printf "workerGroups %s: autoscaling.minReplicas > maxReplicas" $g.name) -}}
{{- end -}}
{{- $_ := set $g "ranksPerPod" (div $tp $nodes) -}}
{{- /* The CPU backends run the CPU-only worker image (IMAGE_CUDA=0, tag -cpu). */ -}}
{{- $_ := set $g "imageRef" (include "llmq.image" (dict "root" .root "image" $g.image "llmq" true "suffix" (ternary "" "-cpu" (eq $g.backend "cuda")))) -}}
{{- $_ := set $g "fullname" (printf "%s-%s" (include "llmq.fullname" .root) $g.name) -}}
{{- $_ := set $g "stream" (include "llmq.stream" (dict "root" .root "model" $g.modelName)) -}}
{{- $path := $g.model.path -}}
{{- if not $path -}}
{{- $path = printf "hf/%s/%s" $g.model.hfRepo (default "main" $g.model.revision) -}}
{{- end -}}
{{- $_ := set $g "modelDir" (printf "/models/%s" $path) -}}
{{- $_ := set $g "kind" (ternary "LeaderWorkerSet" "Deployment" (gt $nodes 1)) -}}
{{- toYaml $g -}}
{{- end -}}

{{/*
Deep merge of two maps, "over" winning: maps merge key by key, anything else
(lists, scalars, false, 0, "") replaces. Sprig's merge/mergeOverwrite skip
empty values (false, 0, []), which would make `minReplicas: 0` or
`tolerations: []` in a group silently keep the default.
*/}}
{{- define "llmq.deepMerge" -}}
{{- $out := deepCopy .base -}}
{{- range $k, $v := .over -}}
{{- $cur := get $out $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $cur) -}}
{{- $_ := set $out $k (include "llmq.deepMerge" (dict "base" $cur "over" $v) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Selector labels of a group's pods: (dict "root" $ "g" $g) */}}
{{- define "llmq.group.selectorLabels" -}}
{{ include "llmq.selectorLabels" (dict "root" .root "component" "worker") }}
llmq.io/group: {{ .g.name }}
{{- end -}}

{{- define "llmq.group.labels" -}}
{{ include "llmq.labels" (dict "root" .root "component" "worker") }}
llmq.io/group: {{ .g.name }}
llmq.io/model: {{ .g.modelName | quote }}
{{- end -}}
