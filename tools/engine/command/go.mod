// Wrapper for pulumi-resource-command, the provider behind pulumi-command 1.2.1.
// NOT BUILDABLE HERE: the Go module proxy answers 403 "This module version is not available" for
// github.com/pulumi/pulumi-command/provider at the pseudo-version of the v1.2.1 tag
// (commit 7f3eb6f3b77c, 2026-03-03T23:59:22Z) and at every other one tried; see ../README.md.
// build.sh probes it first and reports "failed: module not served" within seconds.
module picluster.local/engine/command

go 1.26.6

tool github.com/pulumi/pulumi-command/provider/cmd/pulumi-resource-command

require github.com/pulumi/pulumi-command/provider v0.0.0-20260303235922-7f3eb6f3b77c
