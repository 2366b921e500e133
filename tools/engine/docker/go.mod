// Wrapper for pulumi-resource-docker (bridged from kreuzwerker/terraform-provider-docker).
// NOT BUILDABLE HERE: the provider module is github.com/pulumi/pulumi-docker/provider/v5 since
// v5.0.0 and the Go module proxy answers 403 "This module version is not available" for it at the
// pseudo-versions of v5.0.0 (c2baf6a4997f), v5.1.0 (e944612c4c97) and a later commit; v5.2.0's
// commit is unknown here. Its go.mod also replaces
// github.com/terraform-providers/terraform-provider-docker => ../upstream (a git submodule with
// Pulumi's patches, in no module zip); the proxy serves only
// github.com/kreuzwerker/terraform-provider-docker v0.0.0-20260916201441-96d331c98ff4 unpatched.
// See ../README.md.
module picluster.local/engine/docker

go 1.26.6

tool github.com/pulumi/pulumi-docker/provider/v5/cmd/pulumi-resource-docker

require github.com/pulumi/pulumi-docker/provider/v5 v5.0.0-20260626165050-e944612c4c97

replace github.com/hashicorp/terraform-plugin-sdk/v2 => github.com/pulumi/terraform-plugin-sdk/v2 v2.0.0-20260318212141-5525259d096b
