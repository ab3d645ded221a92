{{/* Names: the release's objects are <fullname>[-suffix]; KubeRay adds its own suffixes to the cluster's. */}}
{{- define "ltx2-farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ltx2-farm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "ltx2-farm.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ltx2-farm.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; `component` says which part of the farm it is. Call with (list $ "component"). */}}
{{- define "ltx2-farm.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ltx2-farm.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ltx2-farm.labels" -}}
{{- $root := index . 0 -}}
{{ include "ltx2-farm.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{/* An image reference: repository@digest where a digest is given, else repository:tag. (dict "image" … "tag" default) */}}
{{- define "ltx2-farm.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .tag .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ltx2-farm.image" -}}
{{- include "ltx2-farm.imageRef" (dict "image" .Values.image "tag" .Chart.AppVersion) -}}
{{- end -}}

{{/* Paths inside the farm's containers (the image's user owns them). */}}
{{- define "ltx2-farm.storePath" -}}/var/lib/ltx2-farm{{- end -}}
{{- define "ltx2-farm.modelsPath" -}}/models{{- end -}}
{{- define "ltx2-farm.modelCachePath" -}}/var/cache/ltx2-farm{{- end -}}
{{- define "ltx2-farm.manifestDir" -}}/etc/ltx2-farm/campaign{{- end -}}
{{/* The farm's metrics endpoint on the head: every worker's series, read through Ray at scrape time. */}}
{{- define "ltx2-farm.metricsPort" -}}9464{{- end -}}
{{/* The scrape job's name, as in deploy/prometheus/prometheus.yml: the alert rules select it. */}}
{{- define "ltx2-farm.prometheusJob" -}}ltx2farm{{- end -}}

{{- define "ltx2-farm.authSecretName" -}}
{{- default (printf "%s-ray-auth" (include "ltx2-farm.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{- define "ltx2-farm.storeClaimName" -}}
{{- default (printf "%s-store" (include "ltx2-farm.fullname" .)) .Values.store.existingClaim -}}
{{- end -}}

{{- define "ltx2-farm.monitoringEnabled" -}}
{{- $enabled := .Values.monitoring.enabled -}}
{{- if kindIs "invalid" $enabled -}}
{{- $enabled = .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor" -}}
{{- end -}}
{{- if $enabled }}true{{ end -}}
{{- end -}}

{{/* Which resource schedules the overnight RayJob: RayCronJob (KubeRay 1.6+, feature gate RayCronJob) or CronJob. */}}
{{- define "ltx2-farm.scheduler" -}}
{{- if eq .Values.campaign.scheduler "auto" -}}
{{- ternary "RayCronJob" "CronJob" (.Capabilities.APIVersions.Has "ray.io/v1/RayCronJob") -}}
{{- else -}}
{{- .Values.campaign.scheduler -}}
{{- end -}}
{{- end -}}

{{/*
The pool's shape, checked against every GPU group with the farm's own estimate (jobs/placement.py):
a rank holds its share of the transformer (all of it, unless sharded) and ~30 GB beside it (Gemma-3-12B
whole on every rank, VAEs, activations). Ray places a worker on any free GPU of any group, so each group
must hold the shape; a gang runs on one node, so a pod must have its GPUs. Megabytes, integer arithmetic.
*/}}
{{- define "ltx2-farm.checkPool" -}}
{{- $c := .Values.campaign -}}
{{- range .Values.gpuGroups -}}
{{- if lt (int .maxReplicas) (int (default 0 .minReplicas)) -}}
{{- fail (printf "gpuGroups %s: minReplicas (%d) is more than maxReplicas (%d)" .name (int .minReplicas) (int .maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if ne $c.runner "none" -}}
{{- $gang := ne $c.placement "replica" -}}
{{- $gpus := 1 -}}
{{- if $gang -}}
{{- $gpus = int (default 2 $c.gpusPerGang) -}}
{{- else if $c.gpusPerGang -}}
{{- fail (printf "campaign.gpusPerGang (%v) is for gangs: set campaign.placement to sequence, guidance or sharded, or leave gpusPerGang empty" $c.gpusPerGang) -}}
{{- end -}}
{{- if and $c.fp8 $gang -}}
{{- fail (printf "campaign.fp8 runs on replicas only, not on %s gangs (the farm refuses it)" $c.placement) -}}
{{- end -}}
{{- if and (eq $c.placement "guidance") (gt $gpus 4) -}}
{{- fail (printf "campaign.gpusPerGang (%d): a guidance gang takes at most 4 GPUs (a step has at most 4 guided passes)" $gpus) -}}
{{- end -}}
{{- $transformerMB := ternary 21600 37800 $c.fp8 -}}
{{- $rankMB := ternary (div $transformerMB $gpus) $transformerMB (eq $c.placement "sharded") -}}
{{- $needMB := add $rankMB 30000 -}}
{{- $shape := ternary (printf "%s gangs of %d" $c.placement $gpus) (ternary "FP8 replicas" "bf16 replicas" $c.fp8) $gang -}}
{{- $slots := 0 -}}
{{- range .Values.gpuGroups -}}
{{- $perPod := int .gpusPerPod -}}
{{- if gt $gpus $perPod -}}
{{- fail (printf "gpuGroups %s: a gang of %d GPUs runs on one node, and this group's pods have %d GPUs (gpusPerPod)" .name $gpus $perPod) -}}
{{- end -}}
{{- $memMB := mul (int .gpuMemoryGB) 1000 -}}
{{- if gt $needMB $memMB -}}
{{- $shards := 0 -}}
{{- range $g := list 2 4 8 16 32 -}}
{{- if and (not $shards) (le $g $perPod) (le (add (div 37800 $g) 30000) $memMB) -}}{{- $shards = $g -}}{{- end -}}
{{- end -}}
{{- $fix := "no sharded gang of its pods fits it either (Gemma stays whole on every rank): leave this group out" -}}
{{- if $shards -}}
{{- $fix = printf "give the pool campaign.placement: sharded with campaign.gpusPerGang: %d, or leave this group out" $shards -}}
{{- end -}}
{{- fail (printf "gpuGroups %s: the pool's %s need about %d GB on each GPU, more than this group's %d GB (gpuMemoryGB); %s" .name $shape (div (add $needMB 999) 1000) (int .gpuMemoryGB) $fix) -}}
{{- end -}}
{{- $slots = add $slots (mul (int .maxReplicas) (div $perPod $gpus)) -}}
{{- end -}}
{{- if gt (int $c.workers) (int $slots) -}}
{{- fail (printf "campaign.workers (%d): the GPU groups hold at most %d workers of %d GPU(s) at their maxReplicas" (int $c.workers) (int $slots) $gpus) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod-level fields every pod of the chart shares. (dict "root" $ "nodeSelector" … "tolerations" … "affinity" … "priorityClassName" …) */}}
{{- define "ltx2-farm.podPlacement" -}}
{{- $v := .root.Values -}}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $v.priorityClassName .priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with (merge (dict) (default (dict) .nodeSelector) $v.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (concat $v.tolerations (default (list) .tolerations)) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $v.affinity .affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
enableServiceLinks: false
{{- end -}}

{{- define "ltx2-farm.podMetadata" -}}
{{- $v := .root.Values -}}
labels:
  {{- include "ltx2-farm.labels" (list .root .component) | nindent 2 }}
  {{- with (merge (dict) (default (dict) .podLabels) $v.podLabels) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with (merge (dict) (default (dict) .podAnnotations) $v.podAnnotations) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The environment of the farm's containers: where the models are, the store, the bucket's endpoint. */}}
{{- define "ltx2-farm.farmEnv" -}}
{{- $v := .Values -}}
{{- if $v.models.source }}
- name: LTX2_MODELS
  value: {{ $v.models.source | quote }}
- name: LTX2_FARM_MODEL_CACHE
  value: {{ include "ltx2-farm.modelCachePath" . }}/models
# the digests the init container verified are the workers' memo: no second hashing of 40 GB
- name: LTX2_FARM_HASH_CACHE
  value: {{ include "ltx2-farm.modelCachePath" . }}/file-hashes.json
{{- else }}
- name: LTX2_CHECKPOINT
  value: {{ include "ltx2-farm.modelsPath" . }}/ltx-2-19b-dev.safetensors
- name: LTX2_GEMMA_ROOT
  value: {{ include "ltx2-farm.modelsPath" . }}/gemma-3-12b-it
- name: LTX2_SPATIAL_UPSAMPLER
  value: {{ include "ltx2-farm.modelsPath" . }}/ltx-2-spatial-upscaler-x2-1.0.safetensors
- name: LTX2_DISTILLED_LORA
  value: {{ include "ltx2-farm.modelsPath" . }}/ltx-2-19b-distilled-lora-384.safetensors
{{- end }}
- name: LTX2_FARM_DB
  value: {{ include "ltx2-farm.storePath" . }}/campaigns.db
{{- with $v.storage.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
# the Kubernetes node labels the series of the workers (and the head's own) on it: pods come and go
- name: LTX2_FARM_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ltx2-farm.bucketEnvFrom" -}}
{{- with .Values.storage.bucketSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* Ray token authentication, the variables every Ray process and client reads (as tests/nodes.py sets them). */}}
{{- define "ltx2-farm.rayAuthEnv" -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ltx2-farm.authSecretName" . }}
      key: auth_token
{{- end -}}

{{/* The ports Ray's processes are started on (rayStartParams), the same on the head and the workers. */}}
{{- define "ltx2-farm.rayPortParams" -}}
{{- $p := .Values.ray.ports -}}
metrics-export-port: {{ $p.metrics | quote }}
node-manager-port: {{ $p.nodeManager | quote }}
object-manager-port: {{ $p.objectManager | quote }}
runtime-env-agent-port: {{ $p.runtimeEnvAgent | quote }}
dashboard-agent-grpc-port: {{ $p.dashboardAgentGrpc | quote }}
dashboard-agent-listen-port: {{ $p.dashboardAgentListen | quote }}
min-worker-port: {{ $p.minWorker | quote }}
max-worker-port: {{ $p.maxWorker | quote }}
{{- end -}}

{{/*
The campaign runner's RayJob spec, the same for the always-on RayJob, the RayCronJob's template and the
CronJob's RayJob. The entrypoint is one `sh -c '…'` word: KubeRay pastes it unquoted into its submitter's
shell line, and Ray runs what `ray job submit` got through a shell on the head, in the head container's
environment: the head's shell expands $LTX2_FARM_METRICS_ADDR (the head pod's IP). (dict "root" $ "forever" bool)
*/}}
{{- define "ltx2-farm.rayJobSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := $v.campaign -}}
{{- $run := list "ltx2-farm campaign run" -}}
{{- if .forever }}{{ $run = append $run "--forever" }}{{ end -}}
{{- $run = append $run (printf "--workers %d --placement %s" (int $c.workers) $c.placement) -}}
{{- if ne $c.placement "replica" }}{{ $run = append $run (printf "--gpus %d" (int (default 2 $c.gpusPerGang))) }}{{ end -}}
{{- if $c.fp8 }}{{ $run = append $run "--fp8" }}{{ end -}}
{{- $run = append $run (printf "--out %s/renders --metrics-port %s --metrics-addr \"$LTX2_FARM_METRICS_ADDR\"" (include "ltx2-farm.storePath" $root) (include "ltx2-farm.metricsPort" $root)) -}}
{{- $script := printf "exec %s" (join " " $run) -}}
{{- if $c.manifest -}}
{{- $script = printf "ltx2-farm campaign submit %s/campaign.yaml ; %s" (include "ltx2-farm.manifestDir" $root) $script -}}
{{- end -}}
entrypoint: {{ printf "sh -c '%s'" $script | quote }}
clusterSelector:
  ray.io/cluster: {{ include "ltx2-farm.fullname" $root }}
submissionMode: K8sJobMode
shutdownAfterJobFinishes: false
{{- if not .forever }}
activeDeadlineSeconds: {{ int $c.maxRunSeconds }}
{{- end }}
submitterPodTemplate:
  metadata:
    {{- include "ltx2-farm.podMetadata" (dict "root" $root "component" "campaign-submitter") | trim | nindent 4 }}
  spec:
    restartPolicy: Never
    automountServiceAccountToken: false
    {{- include "ltx2-farm.podPlacement" (dict "root" $root) | trim | nindent 4 }}
    securityContext:
      {{- toYaml $v.podSecurityContext | nindent 6 }}
    containers:
      - name: ray-job-submitter
        image: {{ include "ltx2-farm.image" $root }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        env:
          {{- include "ltx2-farm.rayAuthEnv" $root | nindent 10 }}
        resources:
          {{- toYaml $c.submitterResources | nindent 10 }}
        securityContext:
          {{- toYaml $v.containerSecurityContext | nindent 10 }}
{{- end -}}
