// Command pulumi-resource-kubernetes: the Kubernetes provider plugin, built from the published
// github.com/pulumi/pulumi-kubernetes/provider/v4 module. Upstream's own main embeds files that
// `go generate` writes (schema-embed.json, terraform-mapping-embed.json) and that the module zip
// lacks, so this main embeds the module's committed schema.json and terraform-mapping.json instead
// (build.sh copies them from the module cache next to this file) and stamps the version into the
// schema at start-up, as upstream's generate.go does at build time.
package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema.json
var schema []byte

//go:embed terraform-mapping.json
var terraformMapping []byte

func main() {
	if version.Version == "" {
		fmt.Fprintln(os.Stderr, "pulumi-resource-kubernetes: built without -X .../pkg/version.Version")
		os.Exit(1)
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(schema, &spec); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-kubernetes: embedded schema: %v\n", err)
		os.Exit(1)
	}
	v, _ := json.Marshal(version.Version)
	spec["version"] = v
	versioned, err := json.Marshal(spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-kubernetes: schema: %v\n", err)
		os.Exit(1)
	}
	provider.Serve("kubernetes", version.Version, versioned, terraformMapping)
}
