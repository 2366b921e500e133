//go:build tools

// Package tools pins the Kubernetes programs this wrapper module builds:
// build.sh runs `go build k8s.io/kubernetes/cmd/<name>` inside this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
