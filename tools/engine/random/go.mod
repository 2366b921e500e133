// Wrapper for pulumi-resource-random (bridged from hashicorp/terraform-provider-random).
// NOT BUILDABLE HERE: the Go module proxy answers 403 "This module version is not available" for
// github.com/pulumi/pulumi-random/provider/v4 at every pseudo-version tried (v4.21.1's commit
// f2d8b029d0f7 is the newest release commit known here; v4.21.4's commit is unknown). The rest of
// what it needs is served: Pulumi's terraform-plugin-sdk fork below, the upstream provider
// (github.com/terraform-providers/terraform-provider-random v1.3.2-0.20260513075824-f8d869dc98d9),
// pulumi-terraform-bridge. The provider's go.mod replaces its one-function shim module
// (github.com/terraform-providers/terraform-provider-random/shim => ./shim), which is not on the
// proxy: it would live in ./shim here. See ../README.md.
module picluster.local/engine/random

go 1.26.6

tool github.com/pulumi/pulumi-random/provider/v4/cmd/pulumi-resource-random

require github.com/pulumi/pulumi-random/provider/v4 v4.0.0-20260722185042-f2d8b029d0f7

replace github.com/hashicorp/terraform-plugin-sdk/v2 => github.com/pulumi/terraform-plugin-sdk/v2 v2.0.0-20260318212141-5525259d096b
