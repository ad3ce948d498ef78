//go:build tools

// Package tools pins Helm's CLI so `go build helm.sh/helm/v3/cmd/helm` builds it from
// the module cache. Nothing of Helm lives in this repository: only this requirement.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
