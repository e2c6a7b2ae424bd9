{{/*
_worker_pod.tpl — the pod template of a worker group, shared by the
single-pod Deployment and the multi-node LeaderWorkerSet.

Called as (dict "root" $ "g" $g "role" ROLE) with $g from "llmq.group" and
ROLE one of: single (the Deployment's pod), leader (pod 0 of a LeaderWorkerSet
group, holding global rank 0) or peer (the other pods of the group).

Single pod (nodes 1): one container runs `llmq-worker --tp N`, which starts
its N-1 peer ranks itself; the pod requests N GPUs.
Multi node (nodes > 1): every pod of the LeaderWorkerSet runs
`llmq-worker-ranks`, which starts ranks LWS_WORKER_INDEX*k .. +k-1 (k =
tp/nodes GPUs per pod) with `--rank R --group G`; G is the same for all pods
of one group and different between groups. Rank 0 (in the leader pod) is the
leader that consumes the queue and serves /metrics and /readyz; peer ranks
serve nothing, so peer pods have no probes: a rank that dies ends its pod
(llmq-worker-ranks exits) and LeaderWorkerSet recreates the group.
*/}}
{{- define "llmq.worker.podTemplate" -}}
{{- $root := .root -}}
{{- $g := .g -}}
{{- $multi := gt (int $g.nodes) 1 -}}
{{- $serves := ne .role "peer" -}}
{{- $gpus := int $g.ranksPerPod -}}
metadata:
  labels:
    {{- include "llmq.group.labels" (dict "root" $root "g" $g) | nindent 4 }}
    {{- with $g.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    llmq.io/role: {{ .role }}
  annotations:
    {{- with $g.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    llmq.io/stream: {{ $g.stream | quote }}
    {{- if eq (include "llmq.redis.tls" $root) "true" }}
    llmq.io/redis-tls-config: {{ include "llmq.redis.stunnelConf" $root | sha256sum | trunc 16 | quote }}
    {{- end }}
spec:
  serviceAccountName: {{ include "llmq.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  # The leader drains for drainTimeoutSeconds after SIGTERM (finishes its
  # in-flight jobs, stops pulling); Kubernetes must wait longer than that.
  terminationGracePeriodSeconds: {{ add (int $g.drainTimeoutSeconds) (int $g.graceMarginSeconds) }}
  securityContext:
    {{- include "llmq.podSecurityContext" (dict "root" $root "uid" $root.Values.securityContext.runAsUser "gid" $root.Values.securityContext.runAsGroup "fsGroup" $root.Values.securityContext.fsGroup) | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $g.model.hfRepo }}
  initContainers:
    # Downloads the Hugging Face repo into the model cache unless a complete
    # copy (marker file .llmq-complete naming repo@revision) is already there.
    - name: fetch-model
      image: {{ $g.imageRef }}
      imagePullPolicy: {{ $g.image.pullPolicy }}
      command: ["llmq-fetch-model"]
      args:
        - --repo
        - {{ $g.model.hfRepo | quote }}
        - --revision
        - {{ default "main" $g.model.revision | quote }}
        - --dest
        - {{ $g.modelDir | quote }}
      env:
        - name: HF_ENDPOINT
          value: {{ $root.Values.modelCache.huggingFace.endpoint | quote }}
        {{- with $root.Values.modelCache.huggingFace.tokenSecret }}
        - name: HF_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ . }}
              key: {{ $root.Values.modelCache.huggingFace.tokenSecretKey }}
        {{- end }}
        - name: HOME
          value: /tmp
      securityContext:
        {{- include "llmq.containerSecurityContext" $root | nindent 8 }}
      resources:
        requests: {cpu: 250m, memory: 256Mi}
        limits: {memory: 1Gi}
      volumeMounts:
        - name: models
          mountPath: /models
        - name: tmp
          mountPath: /tmp
  {{- end }}
  containers:
    - name: worker
      image: {{ $g.imageRef }}
      imagePullPolicy: {{ $g.image.pullPolicy }}
      {{- if $multi }}
      command: ["/usr/bin/tini", "--", "llmq-worker-ranks"]
      {{- else }}
      command: ["/usr/bin/tini", "--", "llmq-worker"]
      {{- end }}
      args:
        - --model
        - {{ $g.modelDir | quote }}
        - --model-name
        - {{ $g.modelName | quote }}
        - --prefix
        - {{ $root.Values.queuePrefix | quote }}
        - --redis
        - {{ include "llmq.redis.instanceUrl" (dict "root" $root "model" $g.modelName) | default (include "llmq.redis.url" $root) | quote }}
        - --consumer
        - $(POD_NAME)
        - --tp
        - {{ int $g.tp | quote }}
        {{- if $multi }}
        - --group
        - $(LLMQ_GROUP)
        {{- else }}
        - --metrics-port
        - {{ int $g.metricsPort | quote }}
        # the kubelet's probes and Prometheus reach the pod on its own IP;
        # the worker binds 127.0.0.1 unless told otherwise
        - --metrics-addr
        - "0.0.0.0"
        {{- end }}
        - --backend
        - {{ $g.backend }}
        - --max-num-seqs
        - {{ int $g.maxNumSeqs | quote }}
        - --max-batched-tokens
        - {{ int $g.maxBatchedTokens | quote }}
        {{- if gt (int $g.kvBlocks) 0 }}
        - --kv-blocks
        - {{ int $g.kvBlocks | quote }}
        {{- end }}
        - --claim-idle-ms
        - {{ int $g.claimIdleMs | quote }}
        - --max-attempts
        - {{ int $g.maxAttempts | quote }}
        - --lane-burst
        - {{ int $g.laneBurst | quote }}
        - --chunk-interval-ms
        - {{ int $g.chunkIntervalMs | quote }}
        - --kv-dtype
        - {{ $g.kvDtype | quote }}
        - --drain-timeout
        - {{ int $g.drainTimeoutSeconds | quote }}
        {{- range $g.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- include "llmq.redis.passwordEnv" $root | nindent 8 }}
        - name: HOME
          value: /tmp
        - name: CUDA_CACHE_PATH
          value: /tmp/cuda-cache
        {{- if $multi }}
        # LeaderWorkerSet injects LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and
        # LWS_WORKER_INDEX; the group index comes from the pod's label.
        - name: LWS_GROUP_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['leaderworkerset.sigs.k8s.io/group-index']
        - name: LLMQ_GROUP
          value: {{ printf "%s-$(LWS_GROUP_INDEX)" $g.fullname | quote }}
        - name: LLMQ_RANKS_PER_POD
          value: {{ $gpus | quote }}
        - name: LLMQ_METRICS_PORT
          value: {{ int $g.metricsPort | quote }}
        - name: LLMQ_METRICS_ADDR
          value: "0.0.0.0"
        # Rank 0 listens on LLMQ_TP_PORT and publishes POD_IP:port in the
        # group's Redis rendezvous; the peer ranks of every pod connect to it.
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: LLMQ_TP_PORT
          value: "29500"
        {{- end }}
        {{- with $g.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if $serves }}
      ports:
        - name: metrics
          containerPort: {{ int $g.metricsPort }}
          protocol: TCP
        {{- if $multi }}
        - name: tp
          containerPort: 29500
          protocol: TCP
        {{- end }}
      # /readyz: 200 once the model is loaded and Redis answers.
      startupProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: 10
        failureThreshold: {{ max 1 (div (add (int $g.loadTimeoutSeconds) 9) 10) }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: 10
        failureThreshold: 3
      livenessProbe:
        httpGet:
          path: /metrics
          port: metrics
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 6
      {{- end }}
      securityContext:
        {{- include "llmq.containerSecurityContext" $root | nindent 8 }}
      resources:
        {{- $res := deepCopy (default dict $g.resources) }}
        {{- if eq $g.backend "cuda" }}
        {{- $limits := default dict $res.limits }}
        {{- $_ := set $limits $g.gpuResource $gpus }}
        {{- $_ := set $res "limits" $limits }}
        {{- $requests := default dict $res.requests }}
        {{- $_ := set $requests $g.gpuResource $gpus }}
        {{- $_ := set $res "requests" $requests }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: /models
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
        - name: tmp
          mountPath: /tmp
    {{- if eq (include "llmq.redis.tls" $root) "true" }}
    {{- include "llmq.redis.tlsProxy.container" (dict "root" $root "image" $g.imageRef "pullPolicy" $g.image.pullPolicy) | nindent 4 }}
    {{- end }}
  volumes:
    - name: models
      {{- if eq $root.Values.modelCache.type "pvc" }}
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-models" (include "llmq.fullname" $root)) $root.Values.modelCache.pvc.existingClaim }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $root.Values.modelCache.emptyDirSizeLimit }}
      {{- end }}
    # NCCL and the CPU communicator exchange tensors through /dev/shm; the
    # container runtime's default (64 MiB) is far too small.
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $g.shmSize }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- if eq (include "llmq.redis.tls" $root) "true" }}
    {{- include "llmq.redis.tlsProxy.volumes" $root | nindent 4 }}
    {{- end }}
{{- end -}}
