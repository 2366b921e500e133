//go:build tools

// Package tools pins the kwok program this wrapper module builds:
// build.sh runs `go build sigs.k8s.io/kwok/cmd/kwok` inside this module.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
