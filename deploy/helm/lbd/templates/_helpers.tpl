{{/*
Helpers of the lbd chart: names, labels, the pool port names, the lbd and
lbctl flags shared by the Deployment, the hook Job and the register
sidecar snippet, and "lbd.validate", the checks that refuse a release with
`fail` before anything is applied.

Numbers from values files reach templates as float64 (Helm reads values
through JSON): compare them with `int`, print them with %v, never %d.
*/}}

{{/* Name of the chart, overridable with nameOverride. */}}
{{- define "lbd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name used for every object. */}}
{{- define "lbd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lbd.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A suffixed object name that stays within 63 characters. */}}
{{- define "lbd.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "lbd.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "lbd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lbd.labels" -}}
helm.sh/chart: {{ include "lbd.chart" . }}
{{ include "lbd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Selector of the lbd pods: the Deployment's (immutable, unchanged since
chart 0.1.0), the Services', the PodDisruptionBudget's, the
NetworkPolicy's and the anti-affinity's.  Nothing else may carry both
labels: the hook Job's pods use "lbd.hookLabels".
*/}}
{{- define "lbd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lbd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the policy hook Job and its pod: never lbd's selector. */}}
{{- define "lbd.hookLabels" -}}
helm.sh/chart: {{ include "lbd.chart" . }}
app.kubernetes.io/name: {{ printf "%s-policy" (include "lbd.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: policy-hook
app.kubernetes.io/part-of: {{ include "lbd.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "lbd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lbd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to appVersion. */}}
{{- define "lbd.image" -}}
{{- $repo := required "image.repository is required: lbd publishes no image, so build deploy/Dockerfile, push it to your registry and set image.repository (e.g. --set image.repository=registry.example.com/lbd)" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* etcd endpoints as lbd's comma-separated --etcd value. */}}
{{- define "lbd.etcd" -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}

{{/*
Kubernetes port name of a pool: the pool name itself when it is already a
valid IANA_SVC_NAME (lowercase letters, digits and '-', at most 15, a
letter, no '-' at either end nor twice in a row) and not one of the
chart's own port names; otherwise up to 9 characters of it made valid,
"-" and 5 hex digits of the sha256 of the name.  Derived from the name
alone, so it does not move when pools are reordered.
Call: include "lbd.portName" "my_db"
*/}}
{{- define "lbd.portName" -}}
{{- $n := toString . -}}
{{- $reserved := list "admin" "http" "metrics" -}}
{{- if and (le (len $n) 15) (regexMatch "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$" $n) (not (contains "--" $n)) (regexMatch "[a-z]" $n) (not (has $n $reserved)) -}}
{{- $n -}}
{{- else -}}
{{- $s := regexReplaceAll "[^a-z0-9-]+" (lower $n) "-" -}}
{{- $s = regexReplaceAll "-+" $s "-" | trimAll "-" | trunc 9 | trimSuffix "-" -}}
{{- if not (regexMatch "[a-z]" $s) -}}
{{- $s = printf "p%s" $s | trunc 9 | trimSuffix "-" -}}
{{- end -}}
{{- printf "%s-%s" $s (sha256sum $n | trunc 5) -}}
{{- end -}}
{{- end -}}

{{/* Lowest pool port (for NET_BIND_SERVICE and the unprivileged-port sysctl). */}}
{{- define "lbd.minPoolPort" -}}
{{- $min := 65536 -}}
{{- range .Values.pools -}}
{{- if lt (int .port) $min -}}{{- $min = int .port -}}{{- end -}}
{{- end -}}
{{- $min -}}
{{- end -}}

{{- define "lbd.hostPort" -}}
{{- $host := index . 0 | toString -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" (trimAll "[]" $host) (index . 1) -}}
{{- else -}}
{{- printf "%s:%v" $host (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* "true" when admin.address keeps the admin API inside the pod. */}}
{{- define "lbd.adminIsLoopback" -}}
{{- $a := .Values.admin.address | toString | trimAll "[]" -}}
{{- if or (hasPrefix "127." $a) (eq $a "::1") (eq $a "localhost") -}}true{{- end -}}
{{- end -}}

{{/* Seconds lbd may need after SIGTERM: delay + grace + margin. */}}
{{- define "lbd.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.delaySeconds) (int .Values.shutdown.graceSeconds) (int .Values.shutdown.marginSeconds) -}}
{{- end -}}

{{/*
etcd TLS and login flags, the same for lbd and `lbctl register`
(--etcd-ca/--etcd-cert/--etcd-key/--etcd-user-file), as YAML list items.
*/}}
{{- define "lbd.etcdAuthArgs" -}}
{{- if .Values.etcd.tlsSecret }}
- --etcd-ca
- /etc/lbd/etcd-tls/ca.crt
{{- if .Values.etcd.clientCert }}
- --etcd-cert
- /etc/lbd/etcd-tls/tls.crt
- --etcd-key
- /etc/lbd/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.etcd.userSecret }}
- --etcd-user-file
- /etc/lbd/etcd-user/user
{{- end }}
{{- end -}}

{{/* Mounts and volumes of the etcd secrets (lbd, hook Job, sidecar). */}}
{{- define "lbd.etcdVolumeMounts" -}}
{{- if .Values.etcd.tlsSecret }}
- name: etcd-tls
  mountPath: /etc/lbd/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.etcd.userSecret }}
- name: etcd-user
  mountPath: /etc/lbd/etcd-user
  readOnly: true
{{- end }}
{{- end -}}

{{- define "lbd.etcdVolumes" -}}
{{- if .Values.etcd.tlsSecret }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tlsSecret }}
    defaultMode: 0440 # group-readable: the pod's fsGroup
{{- end }}
{{- if .Values.etcd.userSecret }}
- name: etcd-user
  secret:
    secretName: {{ .Values.etcd.userSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* The restricted Pod Security Standard, whatever the values add. */}}
{{- define "lbd.podSecurityContext" -}}
{{- $ctx := deepCopy (default (dict) .Values.podSecurityContext) -}}
{{- $_ := set $ctx "runAsNonRoot" true -}}
{{- if not $ctx.seccompProfile -}}
{{- $_ := set $ctx "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- end -}}
{{- $low := int (include "lbd.minPoolPort" .) -}}
{{- if lt $low 1024 -}}
{{- /* A non-root process gets no ambient capability from the runtime:
       lower the pod's unprivileged port floor (a safe sysctl). */ -}}
{{- $sysctls := default (list) $ctx.sysctls -}}
{{- $sysctls = append $sysctls (dict "name" "net.ipv4.ip_unprivileged_port_start" "value" (toString $low)) -}}
{{- $_ := set $ctx "sysctls" $sysctls -}}
{{- end -}}
{{- toYaml $ctx -}}
{{- end -}}

{{/* Container securityContext; NET_BIND_SERVICE only for a pool port < 1024. */}}
{{- define "lbd.containerSecurityContext" -}}
{{- $root := index . 0 -}}
{{- $lowPorts := index . 1 -}}
{{- $ctx := deepCopy (default (dict) $root.Values.securityContext) -}}
{{- $_ := set $ctx "allowPrivilegeEscalation" false -}}
{{- $_ := set $ctx "runAsNonRoot" true -}}
{{- $_ := set $ctx "privileged" false -}}
{{- if not (hasKey $ctx "readOnlyRootFilesystem") -}}
{{- $_ := set $ctx "readOnlyRootFilesystem" true -}}
{{- end -}}
{{- $caps := dict "drop" (list "ALL") -}}
{{- if and $lowPorts (lt (int (include "lbd.minPoolPort" $root)) 1024) -}}
{{- $_ := set $caps "add" (list "NET_BIND_SERVICE") -}}
{{- end -}}
{{- $_ := set $ctx "capabilities" $caps -}}
{{- toYaml $ctx -}}
{{- end -}}

{{/*
Everything the chart refuses, with a sentence saying what to do.  Called
once from the Deployment; the schema catches types and ranges first.
*/}}
{{- define "lbd.validate" -}}
{{- $_ := include "lbd.image" . -}}
{{- if not .Values.pools -}}
{{- fail "pools is empty: lbd needs at least one pool (name, port, servicePort)" -}}
{{- end -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is empty: list the client URLs of every etcd member" -}}
{{- end -}}
{{- if .Values.etcd.tlsSecret -}}
{{- range .Values.etcd.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.endpoints: %s is not https:// but etcd.tlsSecret is set" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- $portNames := list "admin" "http" -}}
{{- $ports := list (int .Values.admin.port) (int .Values.http.port) -}}
{{- $servicePorts := list -}}
{{- range .Values.pools -}}
{{- if not (regexMatch "^[A-Za-z0-9._:-]{1,127}$" (toString .name)) -}}
{{- fail (printf "pools: %q is not a pool name lbd accepts ([A-Za-z0-9._:-], at most 127)" (toString .name)) -}}
{{- end -}}
{{- if has (toString .name) $names -}}
{{- fail (printf "pools: %q is listed twice" (toString .name)) -}}
{{- end -}}
{{- $names = append $names (toString .name) -}}
{{- $pn := include "lbd.portName" .name -}}
{{- if has $pn $portNames -}}
{{- fail (printf "pools: the port name %q of pool %q is taken; rename the pool" $pn (toString .name)) -}}
{{- end -}}
{{- $portNames = append $portNames $pn -}}
{{- if has (int .port) $ports -}}
{{- fail (printf "pools: port %v of pool %q is used twice (pools, admin.port and http.port need their own)" .port (toString .name)) -}}
{{- end -}}
{{- $ports = append $ports (int .port) -}}
{{- if has (int .servicePort) $servicePorts -}}
{{- fail (printf "pools: servicePort %v of pool %q is used twice" .servicePort (toString .name)) -}}
{{- end -}}
{{- $servicePorts = append $servicePorts (int .servicePort) -}}
{{- end -}}
{{- if not (include "lbd.adminIsLoopback" .) -}}
{{- if not .Values.admin.tokenSecret -}}
{{- fail (printf "admin.address %s reaches beyond the pod but admin.tokenSecret is empty: anyone in the cluster could drain backends. Set admin.tokenSecret (a Secret with key \"token\"), or keep admin.address 127.0.0.1 and use kubectl port-forward" (toString .Values.admin.address)) -}}
{{- end -}}
{{- else -}}
{{- if .Values.admin.service.enabled -}}
{{- fail "admin.service.enabled needs admin.address beyond loopback (e.g. 0.0.0.0) and admin.tokenSecret" -}}
{{- end -}}
{{- if .Values.probes.grpc -}}
{{- fail "probes.grpc: kubelet's gRPC probe reaches the pod IP, not loopback: set admin.address 0.0.0.0 with admin.tokenSecret, or leave probes.grpc false (HTTP probes)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.probes.grpc .Values.admin.tlsSecret -}}
{{- fail "probes.grpc: kubelet's gRPC probe speaks cleartext only; it cannot check an admin API with admin.tlsSecret" -}}
{{- end -}}
{{- if and .Values.service.externalTrafficPolicy (not (has .Values.service.type (list "LoadBalancer" "NodePort"))) -}}
{{- fail "service.externalTrafficPolicy applies to LoadBalancer and NodePort Services only" -}}
{{- end -}}
{{- with .Values.podDisruptionBudget.minAvailable -}}
{{- if and (kindIs "float64" .) (ge (int .) (int $.Values.replicaCount)) -}}
{{- fail "podDisruptionBudget.minAvailable must stay below replicaCount, or no node could ever be drained" -}}
{{- end -}}
{{- end -}}
{{- if .Values.register.pool -}}
{{- if not (has (toString .Values.register.pool) $names) -}}
{{- fail (printf "register.pool %q is not one of pools" (toString .Values.register.pool)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
`lbctl register` as a sidecar container of a backend pod: the etcd
endpoints, prefix, TLS and login of this release, POD_NAME and POD_IP from
the downward API, the backend's zone and meta when set, and the backend's
own check (--check) so the key exists only while the backend answers.  Rendered into the ConfigMap
<fullname>-register-sidecar; a parent chart may include it too.
*/}}
{{- define "lbd.registerSidecar" -}}
{{- $r := .Values.register -}}
name: lbd-register
image: {{ include "lbd.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["/usr/bin/lbctl"]
args:
  - register
  - --etcd
  - {{ include "lbd.etcd" . | quote }}
  - --prefix
  - {{ .Values.etcd.prefix | quote }}
  - --pool
  - {{ default (first .Values.pools).name $r.pool | toString | quote }}
  - --id
  - $(POD_NAME)
  - --addr
  - {{ printf "$(POD_IP):%v" $r.port | quote }}
  - --weight
  - {{ $r.weight | toString | quote }}
  - --ttl
  - {{ $r.ttl | quote }}
  {{- with $r.zone }}
  - --zone
  - {{ . | toString | quote }}
  {{- end }}
  {{- range $key, $value := $r.meta }}
  - --meta
  - {{ printf "%s=%s" $key $value | quote }}
  {{- end }}
  {{- if $r.check }}
  - --check
  - {{ $r.check | quote }}
  - --check-interval
  - {{ $r.checkInterval | quote }}
  - --rise
  - {{ $r.rise | toString | quote }}
  - --fall
  - {{ $r.fall | toString | quote }}
  {{- end }}
  {{- with (include "lbd.etcdAuthArgs" .) }}
  {{- . | trim | nindent 2 }}
  {{- end }}
env:
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: POD_IP
    valueFrom:
      fieldRef:
        fieldPath: status.podIP
{{- with (include "lbd.etcdVolumeMounts" .) }}
volumeMounts:
  {{- . | trim | nindent 2 }}
{{- end }}
resources:
  {{- toYaml $r.resources | nindent 2 }}
securityContext:
  {{- include "lbd.containerSecurityContext" (list . false) | nindent 2 }}
{{- end -}}
