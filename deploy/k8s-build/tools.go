//go:build tools

// Package tools pins the upstream commands that scripts/k8s-binaries.sh builds, so
// that `go mod tidy` keeps their whole dependency graph in go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/network-policy-api/apis/v1alpha1"
)
