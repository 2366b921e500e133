//go:build tools

// Package tools pins the etcd program this wrapper module builds:
// build.sh runs `go build go.etcd.io/etcd/server/v3` inside this module.
package tools

import _ "go.etcd.io/etcd/server/v3"
