{{/* Authentication of the in-chart Redis (redis.auth): each role's Redis requires its own password (requirepass),
read from one Secret, redis.auth.existingSecret or by default the chart's own (<fullname>-redis-auth). A pod is
given only the passwords of the roles it uses: the edge, reachable from outside, never holds the money one. */}}

{{/* What a password may be: it goes unescaped into the callers' URLs (redis://:<password>@host), where these
characters need no percent-encoding, and into redis-server's configuration, where they need no quoting. */}}
{{- define "llmrouter.redisPasswordChars" -}}A-Za-z0-9._~-{{- end }}

{{/* The Secret holding the passwords. */}}
{{- define "llmrouter.redisAuthSecret" -}}
{{- default (printf "%s-redis-auth" (include "llmrouter.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The key of one role's password in that Secret. Call with (list $ "money"). */}}
{{- define "llmrouter.redisAuthKey" -}}
{{- $auth := (index . 0).Values.redis.auth }}
{{- ternary (index $auth.existingSecretKeys (index . 1)) (index . 1) (ne $auth.existingSecret "") }}
{{- end }}

{{/* Without existingSecret: the passwords of the in-chart roles as JSON, {"<role>": "<password>"}. What the
cluster's Secret holds is kept (lookup), so an upgrade changes nothing; a missing one is 32 random letters and
digits (190 bits, URL-safe). `helm template` has no cluster to look up: new ones every render. Computed once per
render, since the Secret and the pods' checksums must see the same. "{}" with existingSecret. */}}
{{- define "llmrouter.generatedRedisAuth" -}}
{{- if not (hasKey .Values "_generatedRedisAuth") }}
{{- $passwords := dict }}
{{- if not .Values.redis.auth.existingSecret }}
{{- $held := (lookup "v1" "Secret" .Release.Namespace (include "llmrouter.redisAuthSecret" .)).data | default dict }}
{{- range $role := splitList " " (include "llmrouter.redisRoles" $) }}
{{- if include "llmrouter.inChartRedis" (list $ $role) }}
{{- $_ := set $passwords $role (index $held $role | default "" | b64dec | default (randAlphaNum 32)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set .Values "_generatedRedisAuth" (toJson $passwords) }}
{{- end }}
{{- .Values._generatedRedisAuth }}
{{- end }}

{{/* The env entry giving a container one role's password, from the Secret (the pod spec names it, never holds
it). Call with (list $ "money" "REDIS_PASSWORD"). */}}
{{- define "llmrouter.redisPasswordEnv" -}}
- name: {{ index . 2 }}
  valueFrom:
    secretKeyRef: {name: {{ include "llmrouter.redisAuthSecret" (index . 0) | quote }}, key: {{ include "llmrouter.redisAuthKey" . | quote }}}
{{- end }}

{{/* The name of the env entry holding a role's password in its callers' pods, which their URLs expand. */}}
{{- define "llmrouter.redisPasswordVar" -}}
{{- printf "REDIS_%s_PASSWORD" (upper .) }}
{{- end }}

{{/* A pod annotation rolling a pod when a generated password it uses changes (a deleted Secret made again): a Redis
restarted later would otherwise require a password its running callers do not have. The passwords are 190 random
bits, so their digest reveals nothing. Nothing with existingSecret: restart the Redis and its callers after changing
it (deploy/README.md). Call with (list $ "money cache"). */}}
{{- define "llmrouter.redisAuthChecksum" -}}
{{- $generated := include "llmrouter.generatedRedisAuth" (index . 0) | fromJson }}
{{- $used := dict }}
{{- range $role := splitList " " (index . 1) }}
{{- with index $generated $role }}{{ $_ := set $used $role . }}{{ end }}
{{- end }}
{{- with $used }}{{ toJson . | sha256sum }}{{ end }}
{{- end }}

{{/* The Redis container's start: the password from REDIS_PASSWORD into redis-server's configuration read on its
stdin (`redis-server -`, the here-document written by the shell itself), so it is in no process's command line
(kubelet expands `--requirepass $(REDIS_PASSWORD)` into redis-server's argv, which `ps` on the node shows) and in no
file; exec keeps redis-server PID 1, to get SIGTERM and close its AOF. A password the callers' URLs could not carry is refused here too, as
`helm template` cannot check the Secret. The image's entrypoint, bypassed, set umask 0077 for the data files. */}}
{{- define "llmrouter.redisStart" -}}
refuse() { echo "redis: the password (REDIS_PASSWORD) must be at least 16 of A-Z a-z 0-9 . _ ~ - (the callers' redis:// URLs carry it unescaped)" >&2; exit 1; }
[ "${#REDIS_PASSWORD}" -ge 16 ] || refuse
case "$REDIS_PASSWORD" in *[!{{ include "llmrouter.redisPasswordChars" . }}]*) refuse ;; esac
umask 0077
exec redis-server - "$@" <<EOF
requirepass $REDIS_PASSWORD
EOF
{{- end }}
