{{/* Names shared by the templates: one place, so the CA's list of node-agent
accounts and the agents' ServiceAccount cannot drift apart. */}}
{{- define "warren.nodeAgent" -}}{{ printf "%s-node-agent" .Release.Name }}{{- end }}
{{- define "warren.ztunnel" -}}{{ printf "%s-ztunnel" .Release.Name }}{{- end }}
{{- define "warren.ca" -}}{{ printf "%s-ca" .Release.Name }}{{- end }}
{{/* The Secret the CA keeps its root in; agents mount only its trust bundle. */}}
{{- define "warren.caSecret" -}}{{ printf "%s-ca-root" .Release.Name }}{{- end }}
{{- define "warren.caAddress" -}}
{{ printf "https://%s.%s.svc:15012" (include "warren.ca" .) .Release.Namespace }}
{{- end }}
