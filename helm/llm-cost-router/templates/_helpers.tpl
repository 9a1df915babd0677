{{/* The four services, in dependency order: each entry is a key of values.yaml. */}}
{{- define "llmrouter.services" -}}
classifier providers router edge
{{- end }}

{{/* Who may call each service (NetworkPolicy): only the edge takes traffic from outside the chart. */}}
{{- define "llmrouter.callers" -}}
{{- dict "router" "edge" "classifier" "router" "providers" "router" "redis-money" "router" "redis-cache" "router" "redis-batches" "edge" | toJson -}}
{{- end }}

{{/* Whom each service calls (egress NetworkPolicy): the reverse of llmrouter.callers. */}}
{{- define "llmrouter.callees" -}}
{{- dict "edge" (list "router") "router" (list "classifier" "providers") "classifier" list "providers" list | toJson -}}
{{- end }}

{{- define "llmrouter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' names start with it, and a Service's name must be a DNS label (lower-case letters, digits and "-",
starting with a letter): Helm takes release names the API server would refuse there ("1llm", "llm.prod"). */}}
{{- define "llmrouter.fullname" -}}
{{- $fullname := "" }}
{{- if .Values.fullnameOverride }}
{{- $fullname = .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $fullname = .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $fullname = printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) }}
{{- fail (printf "the objects' names start with %q (the release name, or fullnameOverride), which a Service's name cannot: lower-case letters, digits and \"-\", starting with a letter; choose such a release name or set fullnameOverride" $fullname) }}
{{- end }}
{{- $fullname }}
{{- end }}

{{/* Name of one component's objects: <fullname>-<component>, the fullname cut to 52 characters (and of a trailing
"-"), and further where the name would pass what Kubernetes allows a kind the component has: a Service's name is a
DNS label (63 characters); a CronJob's 52 (its Jobs' names add 11); a StatefulSet's 52 in practice (its pods carry
the label controller-revision-hash, the name and 11 more, which holds 63: past it the API server takes the
StatefulSet and refuses every pod: redis-money, redis-batches, and the router with router.outbox.persistence). Names
within those limits are as they always were. Call with (list $ "router"). */}}
{{- define "llmrouter.component" -}}
{{- $component := index . 1 }}
{{- $statefulSet := and (eq $component "router") (eq (include "llmrouter.outboxPersistent" (index . 0)) "true") }}
{{- $limit := ternary 52 63 (or $statefulSet (has $component (list "ledger-trim" "redis-money" "redis-batches"))) }}
{{- $fullname := include "llmrouter.fullname" (index . 0) | trunc 52 | trimSuffix "-" }}
{{- printf "%s-%s" ($fullname | trunc (sub $limit (add1 (len $component)) | int) | trimSuffix "-") $component }}
{{- end }}

{{- define "llmrouter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "llmrouter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-cost-router
{{- end }}

{{/* Selector labels of one component. Call with (list $ "router"). */}}
{{- define "llmrouter.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "llmrouter.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Full labels of one component's objects. Call with (list $ "router"). */}}
{{- define "llmrouter.componentLabels" -}}
{{ include "llmrouter.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "llmrouter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmrouter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmrouter.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* host:port of a gRPC service inside the cluster. Call with (list $ "classifier"). */}}
{{- define "llmrouter.addr" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- printf "%s:%v" (include "llmrouter.component" .) (index $root.Values $svc).port }}
{{- end }}

{{/* The three Redis roles: money (ROUTER_REDIS_URL), the response cache (ROUTER_CACHE_REDIS_URL), and the
edge's batches (EDGE_BATCH_REDIS_URL, when edge.batchRedis names it). */}}
{{- define "llmrouter.redisRoles" -}}
money cache batches
{{- end }}

{{/* The Redis roles the router uses. */}}
{{- define "llmrouter.routerRedisRoles" -}}
money cache
{{- end }}

{{/* "true" when a Redis role has a Redis, external or in-chart. Call with (list $ "money"). */}}
{{- define "llmrouter.redisEnabled" -}}
{{- with index (index . 0).Values.redis (index . 1) }}
{{- if or .url .urlSecret.name .enabled }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when a Redis role runs in the chart: enabled, no external one given, and used (the batches role only
when edge.batchRedis names it). Call with (list $ "money"). */}}
{{- define "llmrouter.inChartRedis" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- with index $root.Values.redis $role }}
{{- if and .enabled (not .url) (not .urlSecret.name) (or (ne $role "batches") (eq $root.Values.edge.batchRedis "batches")) }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when the in-chart Redis pods run the redis_exporter sidecar: redis.exporter.enabled and the chart's scraping
on (monitoring.serviceMonitor.enabled). Not gated on the cluster serving the Operator's CRDs, as the ServiceMonitor
is: a pod template that changed with them would restart the money Redis when the Operator is installed. */}}
{{- define "llmrouter.redisExporter" -}}
{{- if and .Values.redis.exporter.enabled .Values.monitoring.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/* "true" when a Redis role runs in the chart with its exporter sidecar. Call with (list $ "money"). */}}
{{- define "llmrouter.redisExported" -}}
{{- if and (include "llmrouter.redisExporter" (index . 0)) (include "llmrouter.inChartRedis" .) }}true{{ end }}
{{- end }}

{{/* "true" when one of these Redis roles is external (its callers' egress then needs networkPolicy.egress.redisTo).
Call with (list $ "money cache"). */}}
{{- define "llmrouter.externalRedis" -}}
{{- $root := index . 0 }}
{{- range $role := splitList " " (index . 1) }}
{{- with index $root.Values.redis $role }}{{ if or .url .urlSecret.name }}true{{ end }}{{ end }}
{{- end }}
{{- end }}

{{/* The TCP ports the external Redis of these roles are reached on, as JSON: the ports a URL in values names (each
node's of a redis+cluster:// URL; 6379 where it names none), networkPolicy.egress.redisPort for one in a Secret (the
chart cannot read it). Call with (list $ "money cache"). */}}
{{- define "llmrouter.externalRedisPorts" -}}
{{- $root := index . 0 }}
{{- $ports := list }}
{{- range $role := without (splitList " " (index . 1)) "" }}
{{- with index $root.Values.redis $role }}
{{- if .urlSecret.name }}
{{- $ports = append $ports ($root.Values.networkPolicy.egress.redisPort | int) }}
{{- else if .url }}
{{- /* The hosts: past the scheme and any user info, up to the path or query. */}}
{{- $hosts := regexReplaceAll "^[^:]*://" .url "" }}
{{- $hosts = regexReplaceAll "^.*@" (regexReplaceAll "[/?#].*$" $hosts "") "" }}
{{- range $host := splitList "," $hosts }}
{{- $ports = append $ports (regexFind "[0-9]+$" (regexFind ":[0-9]+$" $host) | default "6379" | int) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports | uniq | sortAlpha | toJson }}
{{- end }}

{{/* The egress rule to the external Redis of these roles: networkPolicy.egress.redisTo on their ports. Call with
(list $ "money cache"). */}}
{{- define "llmrouter.externalRedisEgress" -}}
- ports:
    {{- range include "llmrouter.externalRedisPorts" . | fromJsonArray }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  to:
    {{- toYaml (index . 0).Values.networkPolicy.egress.redisTo | nindent 4 }}
{{- end }}

{{/* The Redis role holding the edge's batches (edge.batchRedis) when that role has a Redis; empty: in process. */}}
{{- define "llmrouter.batchRedis" -}}
{{- with .Values.edge.batchRedis }}{{ if include "llmrouter.redisEnabled" (list $ .) }}{{ . }}{{ end }}{{ end }}
{{- end }}

{{/* The env entries giving a service one Redis role's URL. An in-chart Redis': its password from the Secret, then the
URL naming it, which Kubernetes expands ($(VAR), an entry defined before it). Call with (list $ "money"
"ROUTER_REDIS_URL"). */}}
{{- define "llmrouter.redisUrlEnv" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- with index $root.Values.redis $role }}
{{- if .urlSecret.name }}
- name: {{ index $ 2 }}
  valueFrom:
    secretKeyRef: {name: {{ .urlSecret.name | quote }}, key: {{ .urlSecret.key | quote }}}
{{- else if .url }}
- name: {{ index $ 2 }}
  value: {{ .url | quote }}
{{- else if .enabled }}
{{- $password := include "llmrouter.redisPasswordVar" $role }}
{{- include "llmrouter.redisPasswordEnv" (list $root $role $password) | nindent 0 }}
- name: {{ index $ 2 }}
  value: {{ printf "redis://:$(%s)@%s:%v/0" $password (include "llmrouter.component" (list $root (printf "redis-%s" $role))) .port | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The TCP port a URL is reached on: the one it names, else 80 for http and 443 for https. */}}
{{- define "llmrouter.urlPort" -}}
{{- $url := urlParse . }}
{{- regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) | default (ternary "80" "443" (eq $url.scheme "http")) }}
{{- end }}

{{/* The registry file the router and providers read: values' registry.models, else files/models.yaml. */}}
{{- define "llmrouter.registryYaml" -}}
{{- if .Values.registry.models }}
{{- toYaml .Values.registry.models }}
{{- else }}
{{- .Files.Get "files/models.yaml" }}
{{- end }}
{{- end }}

{{/* An env value as the services parse it. Helm reads a values file's numbers as floats and prints those of a
million or more in exponent form ("2.592e+06"), which an integer setting refuses at start: whole ones as integers.
Only those an int64 holds: past it the conversion wraps (1e20 became -9223372036854775808); as printed, a decimal
setting still reads it. */}}
{{- define "llmrouter.envValue" -}}
{{- $whole := false }}
{{- if kindIs "float64" . }}{{ $whole = and (eq . (floor .)) (lt . 9.2e18) (gt . -9.2e18) }}{{ end }}
{{- if $whole }}{{ int64 . | toString | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- end }}

{{/* Environment of one service: what the chart sets, then values' env, which may not name any of those again (a
second entry hides the first, so the value the chart checks is not the one served, and server-side apply
refuses a list keyed by name holding one name twice). */}}
{{- define "llmrouter.env" -}}
{{- $v := index (index . 0).Values (index . 1) }}
{{- $own := include "llmrouter.chartEnv" . }}
{{- $own }}
{{- range $name, $value := $v.env }}
{{- if regexMatch (printf "(?m)^- name: %s$" $name) $own }}
{{- fail (printf "%s.env.%s: the chart sets it from its own values (values.yaml, deploy/README.md); set it there" (index $ 1) $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ include "llmrouter.envValue" $value }}
{{- end }}
{{- end }}

{{/* Where a router pod without ledgerDsnSecret keeps its SQLite ledger: an emptyDir of its own. */}}
{{- define "llmrouter.sqliteLedgerDir" -}}/var/lib/llmrouter/ledger{{- end }}

{{/* "true" when the router keeps its charge outbox on a claim of its own per pod (router.outbox.persistence): the
router is then a StatefulSet. */}}
{{- define "llmrouter.outboxPersistent" -}}
{{- if .Values.router.outbox.persistence.enabled }}true{{ end }}
{{- end }}

{{/* The spec of a StatefulSet's claim template: as the installed StatefulSet has it (lookup, on helm upgrade), else the
one wanted. Kubernetes refuses any change to a StatefulSet's claim templates: a new size or class in values stopped
the upgrade part-way through; the claims are kept as they were made (grow the PVCs themselves; NOTES.txt says when
values ask for other). Call with (list $ <StatefulSet name> <claim name> <wanted spec>); JSON. */}}
{{- define "llmrouter.claimSpec" -}}
{{- $root := index . 0 }}
{{- $claim := index . 2 }}
{{- $spec := index . 3 }}
{{- $live := (lookup "apps/v1" "StatefulSet" $root.Release.Namespace (index . 1)).spec | default dict }}
{{- range $live.volumeClaimTemplates | default list }}
{{- if eq .metadata.name $claim }}{{ $spec = pick .spec "accessModes" "storageClassName" "resources" "volumeMode" }}{{ end }}
{{- end }}
{{- toJson $spec }}
{{- end }}

{{/* The claim spec values ask for: an in-chart Redis' "data" (list $ "money"), or the router's "outbox" (list $ "outbox"). */}}
{{- define "llmrouter.claimWanted" -}}
{{- $root := index . 0 }}
{{- $spec := dict }}
{{- if eq (index . 1) "outbox" }}
{{- with $root.Values.router.outbox.persistence }}
{{- $spec = dict "accessModes" .accessModes "resources" (dict "requests" (dict "storage" (toString .size))) }}
{{- with .storageClassName }}{{ $_ := set $spec "storageClassName" (ternary "" . (eq . "-")) }}{{ end }}
{{- end }}
{{- else }}
{{- with (index $root.Values.redis (index . 1)).persistence }}
{{- $spec = dict "accessModes" (list "ReadWriteOnce") "resources" (dict "requests" (dict "storage" (toString .size))) }}
{{- with .storageClass }}{{ $_ := set $spec "storageClassName" . }}{{ end }}
{{- end }}
{{- end }}
{{- toJson $spec }}
{{- end }}

{{/* A storage quantity ("4Gi", "1000M", "512") in bytes, to compare two sizes as Kubernetes does: the API server keeps
one in its canonical form (1024Mi as 1Gi), not as values wrote it. Another form (an exponent, millis) as written. */}}
{{- define "llmrouter.quantityBytes" -}}
{{- $q := toString . }}
{{- $number := regexFind "^[0-9]+([.][0-9]+)?" $q }}
{{- $scales := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- $unit := trimPrefix $number $q }}
{{- if and $number (hasKey $scales $unit) }}{{ mulf (float64 $number) (index $scales $unit) }}{{ else }}{{ $q }}{{ end }}
{{- end }}

{{/* "<StatefulSet> keeps claims of ..." where a StatefulSet's claims (llmrouter.claimSpec) are not what values ask for,
with the way to what they ask; "" else. A bigger disk is each claim grown, then the StatefulSet deleted keeping its
pods and claims (--cascade=orphan) so the upgrade makes its templates anew: the delete alone leaves the claims as they
were made (the new StatefulSet takes them as they are), the note quiet. Call with (list $ <StatefulSet name> <claim
name> <wanted spec> <values path>). */}}
{{- define "llmrouter.claimKept" -}}
{{- $root := index . 0 }}
{{- $sts := index . 1 }}
{{- $wanted := index . 3 }}
{{- $kept := include "llmrouter.claimSpec" (slice . 0 4) | fromJson }}
{{- $size := $kept.resources.requests.storage }}
{{- $class := $kept.storageClassName | default "" }}
{{- $wantedSize := toString $wanted.resources.requests.storage }}
{{- $otherKind := or (ne $class ($wanted.storageClassName | default "")) (ne (toJson $kept.accessModes) (toJson $wanted.accessModes)) }}
{{- $otherSize := ne (include "llmrouter.quantityBytes" $size) (include "llmrouter.quantityBytes" $wantedSize) }}
{{- if or $otherSize $otherKind }}
{{- printf "%s keeps its claims as they were made (%s%s, %s), not %s's (%s%s, %s): Kubernetes refuses changing a StatefulSet's claim templates" $sts $size (ternary (printf " of class %s" $class) "" (ne $class "")) (join "," $kept.accessModes) (index . 4) $wantedSize (ternary (printf " of class %s" ($wanted.storageClassName | default "")) "" (ne ($wanted.storageClassName | default "") "")) (join "," $wanted.accessModes) }}
{{- /* The router's claims are one per pod (outbox-<StatefulSet>-<ordinal>); an in-chart Redis has one pod. */}}
{{- $pvc := printf "%s-%s-%s" (index . 2) $sts (ternary "<ordinal>" "0" (eq (index . 2) "outbox")) }}
{{- if $otherSize }}
{{- printf "; for %s, grow each claim where its StorageClass allows expansion (kubectl -n %s patch pvc %s -p '{\"spec\":{\"resources\":{\"requests\":{\"storage\":\"%s\"}}}}'), then delete the StatefulSet keeping its pods and claims (kubectl -n %s delete statefulset %s --cascade=orphan) and upgrade again: its claim templates follow values (the delete alone leaves the claims at their size)" $wantedSize $root.Release.Namespace $pvc $wantedSize $root.Release.Namespace $sts }}
{{- end }}
{{- if $otherKind }}
{{- printf "; another class or access modes take new claims, the data copied over" }}
{{- end }}
{{- printf " (deploy/README.md)" }}
{{- end }}
{{- end }}

{{/* The kind of a service's workload: a StatefulSet for the router with a persistent outbox, else a Deployment. */}}
{{- define "llmrouter.workloadKind" -}}
{{- $root := index . 0 }}
{{- ternary "StatefulSet" "Deployment" (and (eq (index . 1) "router") (eq (include "llmrouter.outboxPersistent" $root) "true")) }}
{{- end }}

{{/* Where the router's outbox claim is mounted; ROUTER_DATA_DIR is a directory inside it, which the router makes 0700
(the mount point is the volume's root, group-writable for fsGroup: the router refuses a data dir others may write). */}}
{{- define "llmrouter.outboxMount" -}}/var/lib/llmrouter/outbox{{- end }}

{{/* The headless Service governing the router's StatefulSet (spec.serviceName): the router's own when the gRPC
Services are headless, else one of its own that nothing scrapes or calls. */}}
{{- define "llmrouter.routerPodsService" -}}
{{- if .Values.grpcHeadlessServices }}{{ include "llmrouter.component" (list . "router") }}
{{- else }}{{ include "llmrouter.component" (list . "router-pods") }}
{{- end }}
{{- end }}

{{/* What the chart sets of one service's environment: <PREFIX>_HOST/PORT/METRICS_PORT/LOG_LEVEL, its peers. */}}
{{- define "llmrouter.chartEnv" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- $v := index $root.Values $svc }}
{{- $p := upper $svc }}
- name: {{ $p }}_HOST
  value: 0.0.0.0
- name: {{ $p }}_PORT
  value: {{ include "llmrouter.envValue" $v.port }}
- name: {{ $p }}_METRICS_PORT
  value: {{ include "llmrouter.envValue" $v.metricsPort }}
- name: {{ $p }}_LOG_LEVEL
  value: {{ $root.Values.logLevel | quote }}
- name: {{ $p }}_GRACE_SECONDS
  value: {{ include "llmrouter.envValue" $root.Values.drainSeconds }}
{{- if ne $svc "edge" }}
- name: {{ $p }}_MAX_INFLIGHT_CALLS
  value: {{ include "llmrouter.envValue" $v.maxInflightCalls }}
{{- end }}
{{- if has $svc (list "router" "providers") }}
- name: {{ $p }}_REGISTRY_PATH
  value: {{ printf "%s/models.yaml" $root.Values.registry.mountPath | quote }}
{{- end }}
{{- if eq $svc "router" }}
- name: ROUTER_CLASSIFIER_ADDR
  value: {{ include "llmrouter.addr" (list $root "classifier") | quote }}
- name: ROUTER_PROVIDERS_ADDR
  value: {{ include "llmrouter.addr" (list $root "providers") | quote }}
{{- include "llmrouter.redisUrlEnv" (list $root "money" "ROUTER_REDIS_URL") }}
{{- include "llmrouter.redisUrlEnv" (list $root "cache" "ROUTER_CACHE_REDIS_URL") }}
- name: ROUTER_HOLD_TOTALS
  value: {{ $v.holdTotals | quote }}
- name: ROUTER_BATCH_ANSWER_KEPT_S
  value: {{ include "llmrouter.envValue" $v.batchAnswers.keptSeconds }}
- name: ROUTER_BATCH_ANSWER_KEPT_BYTES
  value: {{ include "llmrouter.envValue" $v.batchAnswers.keptBytes }}
{{- if include "llmrouter.outboxPersistent" $root }}
- name: ROUTER_DATA_DIR
  value: {{ printf "%s/router" (include "llmrouter.outboxMount" $root) | quote }}
{{- end }}
{{- with $v.endUserHashSecret }}{{ if .name }}
- name: ROUTER_END_USER_HASH_SECRET
  valueFrom:
    secretKeyRef: {name: {{ .name | quote }}, key: {{ .key | quote }}}
{{- end }}{{ end }}
{{- with $v.budgetWebhookSecret }}{{ if .name }}
- name: ROUTER_BUDGET_ALERT_WEBHOOK_URL
  valueFrom:
    secretKeyRef: {name: {{ .name | quote }}, key: {{ .key | quote }}}
{{- end }}{{ end }}
{{- if $v.ledgerDsnSecret.name }}
- name: ROUTER_LEDGER_SQL_DSN
  valueFrom:
    secretKeyRef: {name: {{ $v.ledgerDsnSecret.name | quote }}, key: {{ $v.ledgerDsnSecret.key | quote }}}
{{- if include "llmrouter.ledgerSink" $root }}
{{- /* The standalone sink (ledger-sink.yaml) copies the ledger: the routers' own sinks are off. */}}
- name: ROUTER_LEDGER_SQL_SINK
  value: "false"
{{- end }}
{{- if include "llmrouter.ledgerTrim" $root }}
{{- include "llmrouter.ledgerRetentionEnv" $root }}
{{- end }}
{{- else }}
{{- /* The SQLite ledger on its own volume (deployment.yaml), bounded below the volume's sizeLimit. */}}
- name: ROUTER_LEDGER_SQL_PATH
  value: {{ printf "%s/ledger.sqlite3" (include "llmrouter.sqliteLedgerDir" .) | quote }}
- name: ROUTER_LEDGER_SQL_MAX_MIB
  value: {{ include "llmrouter.envValue" (div (mul $v.sqliteLedger.sizeLimitMiB 3) 4) }}
- name: ROUTER_LEDGER_SQL_RETENTION_DAYS
  value: {{ include "llmrouter.envValue" $v.sqliteLedger.retentionDays }}
{{- if include "llmrouter.ledgerTrim" $root }}
{{- include "llmrouter.ledgerRetentionEnv" $root }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $svc "providers" }}
- name: PROVIDERS_API_KEYS_DIR
  value: {{ $v.apiKeys.mountPath | quote }}
{{- end }}
{{- if eq $svc "edge" }}
- name: EDGE_ROUTER_ADDR
  value: {{ include "llmrouter.addr" (list $root "router") | quote }}
- name: EDGE_ALLOW_ANONYMOUS
  value: {{ $v.allowAnonymous | quote }}
- name: EDGE_READINESS_TIMEOUT_S
  value: {{ include "llmrouter.envValue" $v.readinessTimeoutSeconds }}
- name: EDGE_BATCH_MAX_FILE_BYTES
  value: {{ include "llmrouter.envValue" $v.batches.maxFileBytes }}
- name: EDGE_BATCH_MAX_CONCURRENT_UPLOADS
  value: {{ include "llmrouter.envValue" $v.batches.maxConcurrentUploads }}
- name: EDGE_BATCH_MAX_RUNNING
  value: {{ include "llmrouter.envValue" $v.batches.maxRunning }}
- name: EDGE_FILES_TENANT_BYTES
  value: {{ include "llmrouter.envValue" $v.batches.filesTenantBytes }}
{{- with include "llmrouter.batchRedis" $root }}
{{- include "llmrouter.redisUrlEnv" (list $root . "EDGE_BATCH_REDIS_URL") }}
{{- end }}
{{- with $v.apiKeys }}{{ if .existingSecret }}
- name: EDGE_API_KEYS_FILE
  value: {{ printf "%s/%s" .mountPath .key | quote }}
{{- end }}{{ end }}
{{- end }}
{{- with $root.Values.tls }}
{{- if .enabled }}
- name: {{ $p }}_TLS_DIR
  value: {{ .mountPath | quote }}
{{- if ne $svc "edge" }}
- name: {{ $p }}_HEALTH_PORT
  value: {{ include "llmrouter.envValue" .healthPort }}
{{- end }}
{{- else if ne $svc "edge" }}
- name: {{ $p }}_AUTH
  value: none
- name: {{ $p }}_AUTH_NONE_ALLOW_REMOTE
  value: "true"
{{- end }}
{{- end }}
{{- end }}

{{/* Where the services' certificates come from (values' tls.mode, `auto` resolved against the cluster):
certManager, generated or existingSecrets; empty without TLS. */}}
{{- define "llmrouter.tlsMode" -}}
{{- with .Values.tls }}
{{- if not .enabled }}
{{- else if ne .mode "auto" }}{{ .mode }}
{{- else if $.Capabilities.APIVersions.Has "cert-manager.io/v1" }}certManager
{{- else }}generated
{{- end }}
{{- end }}
{{- end }}

{{/* The kubernetes.io/tls Secret a service mounts. Call with (list $ "router"). */}}
{{- define "llmrouter.tlsSecret" -}}
{{- $root := index . 0 }}
{{- $existing := "" }}
{{- if eq (include "llmrouter.tlsMode" $root) "existingSecrets" }}
{{- $existing = index $root.Values.tls.existingSecrets (index . 1) }}
{{- end }}
{{- default (printf "%s-tls" (include "llmrouter.component" .)) $existing }}
{{- end }}

{{/* The names a service's callers dial, as JSON: its Service's name and namespace forms. Call with (list $ "router"). */}}
{{- define "llmrouter.dnsNames" -}}
{{- $name := include "llmrouter.component" . }}
{{- $ns := (index . 0).Release.Namespace }}
{{- list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) | toJson }}
{{- end }}

{{/* The release CA's common name, "<fullname> CA", the fullname cut so it fits the 64 bytes RFC 5280 allows (which
cert-manager enforces: it refuses a longer one, and the install fails); shorter names are as before. */}}
{{- define "llmrouter.caCommonName" -}}
{{- printf "%s CA" (include "llmrouter.fullname" . | trunc 61 | trimSuffix "-") }}
{{- end }}

{{/* tls.mode generated: the Secrets' data (base64) as JSON, {"ca": {tls.crt, tls.key}, "<service>": {tls.crt,
tls.key, ca.crt}}. What the cluster holds is kept (lookup): the CA, and each service's certificate while the CA
that signed it is the current one; anything missing is generated. Computed once per render and kept in .Values,
since the Secrets and the pods' checksum annotations must see the same random keys. */}}
{{- define "llmrouter.generatedTls" -}}
{{- if not (hasKey .Values "_generatedTls") }}
{{- $ns := .Release.Namespace }}
{{- $days := int .Values.tls.generated.days }}
{{- $caData := (lookup "v1" "Secret" $ns (printf "%s-ca" (include "llmrouter.fullname" .))).data | default dict }}
{{- $ca := dict }}
{{- if and (index $caData "tls.crt") (index $caData "tls.key") }}
{{- $ca = buildCustomCert (index $caData "tls.crt") (index $caData "tls.key") }}
{{- else }}
{{- $ca = genCA (include "llmrouter.caCommonName" .) $days }}
{{- $caData = dict "tls.crt" ($ca.Cert | b64enc) "tls.key" ($ca.Key | b64enc) }}
{{- end }}
{{- $generated := dict "ca" $caData }}
{{- range $svc := splitList " " (include "llmrouter.services" $) }}
{{- $data := (lookup "v1" "Secret" $ns (include "llmrouter.tlsSecret" (list $ $svc))).data | default dict }}
{{- if or (not (index $data "tls.key")) (ne (index $data "ca.crt" | default "") (index $caData "tls.crt")) }}
{{- $cert := genSignedCert $svc nil (include "llmrouter.dnsNames" (list $ $svc) | fromJsonArray) $days $ca }}
{{- $data = dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" (index $caData "tls.crt") }}
{{- end }}
{{- $_ := set $generated $svc $data }}
{{- end }}
{{- $_ := set .Values "_generatedTls" (toJson $generated) }}
{{- end }}
{{- .Values._generatedTls }}
{{- end }}

{{/* Probes: native gRPC health checks (grpc.health.v1) for the gRPC services; for the edge GET /healthz
(the process answers) and, for readiness, GET /readyz (the router behind it is serving).
With mTLS they use the plaintext health-only port: kubelet's gRPC probes cannot present a certificate.
Readiness and liveness give a slow answer (a throttled CPU) 3 s; the edge's /readyz waits up to
EDGE_READINESS_TIMEOUT_S for the router's own check, so its probe waits that and 2 s more: with the kubelet's
default (1 s, which the check's took too) a slow router timed the probe out before /readyz could answer 503. The
startup probe waits <service>.startupProbeTimeoutSeconds: a cold start on a busy node answers late too. */}}
{{- define "llmrouter.probes" -}}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- $grpcPort := ternary $root.Values.tls.healthPort (index $root.Values $svc).port $root.Values.tls.enabled }}
{{- $check := ternary (dict "httpGet" (dict "path" "/healthz" "port" "http")) (dict "grpc" (dict "port" $grpcPort)) (eq $svc "edge") }}
{{- $timeout := 3 }}
{{- $edgeReadiness := add (ceil $root.Values.edge.readinessTimeoutSeconds | int) 2 }}
startupProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 2
  timeoutSeconds: {{ (index $root.Values $svc).startupProbeTimeoutSeconds }}
  failureThreshold: 60      # up to 2 minutes to load the models
readinessProbe:
  {{- toYaml (ternary (dict "httpGet" (dict "path" "/readyz" "port" "http")) $check (eq $svc "edge")) | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: {{ ternary $edgeReadiness $timeout (eq $svc "edge") }}
  failureThreshold: 2
livenessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: {{ $timeout }}
  failureThreshold: 3
{{- end }}

{{/* NetworkPolicy ingress rule letting a component's pods in. Call with (list $ "router"). */}}
{{- define "llmrouter.podPeer" -}}
- podSelector:
    matchLabels:
      {{- include "llmrouter.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* checkov skips, each with its reason, for a Deployment. Call with (list imageValues extraSkips). */}}
{{- define "llmrouter.checkovSkips" -}}
{{- $image := index . 0 }}
{{- $skips := index . 1 }}
{{- if not $image.digest }}
{{- /* Only the services' image (values' image) takes a digest; the Redis pods' images are pulled by tag. */}}
{{- $hint := ternary "; set image.digest to pin by digest" "" (hasKey $image "digest") }}
{{- $skips = append $skips (printf "CKV_K8S_43=pinned by an immutable version tag%s" $hint) }}
{{- end }}
{{- if ne $image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=the image is pinned (tag or digest), so IfNotPresent pulls nothing stale" }}
{{- end }}
{{- range $i, $skip := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $skip }}
{{- end }}
{{- end }}

{{/* The days of ledger the streams keep, where the chart trims them: the CronJob and the router read the same. */}}
{{- define "llmrouter.ledgerRetentionEnv" }}
- name: ROUTER_LEDGER_RETENTION_DAYS
  value: {{ include "llmrouter.envValue" .Values.router.ledgerTrim.retentionDays }}
{{- end }}

{{/* "true" when the ledger-trim CronJob runs: router.ledgerTrim on, a money Redis (holding the streams), and the
SQL ledger in PostgreSQL (router.ledgerDsnSecret: a SQLite one, per pod, dies with its pod) or a volume to trim to
(router.ledgerTrim.archive.existingClaim: llmrouter.ledgerTrimArchive). */}}
{{- define "llmrouter.ledgerTrim" -}}
{{- with .Values.router }}
{{- $kept := or .ledgerDsnSecret.name .ledgerTrim.archive.existingClaim }}
{{- if and .ledgerTrim.enabled $kept (include "llmrouter.redisEnabled" (list $ "money")) }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when the ledger-trim CronJob writes what it trims to the archive volume (`trim --out`): no SQL ledger
in PostgreSQL holds it. */}}
{{- define "llmrouter.ledgerTrimArchive" -}}
{{- if and (include "llmrouter.ledgerTrim" .) (not .Values.router.ledgerDsnSecret.name) }}true{{ end }}
{{- end }}

{{/* "true" when the PrometheusRule records llmrouter:ledger_trim_cronjob_info (the series naming the release's
ledger-trim CronJob, from which the dashboard lists it): with the CronJob, where the PrometheusRule is rendered. */}}
{{- define "llmrouter.ledgerTrimRecorded" -}}
{{- $rule := and .Values.monitoring.prometheusRule.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule") }}
{{- if and $rule (include "llmrouter.ledgerTrim" .) }}true{{ end }}
{{- end }}

{{/* "true" when the standalone SQL ledger sink runs (router.ledgerSink.enabled); refused without a money Redis (the
streams it copies) or the SQL ledger in PostgreSQL (router.ledgerDsnSecret: a SQLite file is each router pod's own). */}}
{{- define "llmrouter.ledgerSink" -}}
{{- with .Values.router }}
{{- if .ledgerSink.enabled }}
{{- if not (and .ledgerDsnSecret.name (include "llmrouter.redisEnabled" (list $ "money"))) }}
{{- fail "router.ledgerSink: the standalone SQL sink copies the money Redis' ledger streams into PostgreSQL: it needs a money Redis (redis.money) and router.ledgerDsnSecret" }}
{{- end }}true
{{- end }}
{{- end }}
{{- end }}
