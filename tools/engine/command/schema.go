package main

// A hand-written, reduced package schema (GetSchema): the `command:remote:Command` resource and
// the types it uses, with the same property names, types, defaults, secretness and
// replaceOnChanges as pulumi-command v1.2.1's, without its documentation, examples and the other
// resources and functions (not implemented by this double).

import (
	"encoding/json"
)

// loggingEnum is the schema of both packages' Logging type (the same four values).
var loggingEnum = map[string]any{
	"type": "string",
	"enum": []map[string]any{
		{"name": logStdout, "value": logStdout},
		{"name": logStderr, "value": logStderr},
		{"name": logStdoutAndStderr, "value": logStdoutAndStderr},
		{"name": logNone, "value": logNone},
	},
}

func schemaJSON(version string) string {
	str := map[string]any{"type": "string"}
	secretStr := map[string]any{"type": "string", "secret": true}
	connProps := map[string]any{
		"host":               str,
		"port":               map[string]any{"type": "number", "default": defaultPort},
		"user":               map[string]any{"type": "string", "default": defaultUser},
		"password":           secretStr,
		"privateKey":         secretStr,
		"privateKeyPassword": secretStr,
		"agentSocketPath":    str,
		"hostKey":            str,
		"dialErrorLimit":     map[string]any{"type": "integer", "default": defaultDialErrorLimit},
		"perDialTimeout":     map[string]any{"type": "integer", "default": defaultPerDialTimeout},
	}
	proxyProps := map[string]any{}
	for k, v := range connProps {
		proxyProps[k] = v
	}
	connection := map[string]any{}
	for k, v := range connProps {
		connection[k] = v
	}
	connection["proxy"] = map[string]any{
		"$ref":        "#/types/command:remote:ProxyConnection",
		"description": "Not supported by the test double.",
	}
	inputs := map[string]any{
		"connection": map[string]any{"$ref": "#/types/command:remote:Connection", "secret": true},
		"create":     str,
		"update":     str,
		"delete":     str,
		"stdin":      str,
		"environment": map[string]any{
			"type": "object", "additionalProperties": str,
		},
		"logging":                map[string]any{"$ref": "#/types/command:remote:Logging"},
		"triggers":               map[string]any{"type": "array", "items": map[string]any{"$ref": "pulumi.json#/Any"}, "replaceOnChanges": true},
		"addPreviousOutputInEnv": map[string]any{"type": "boolean"},
	}
	props := map[string]any{"stdout": str, "stderr": str}
	for k, v := range inputs {
		props[k] = v
	}
	// command:local:Command: the same inputs without `connection`, plus `dir` and `interpreter`.
	localInputs := map[string]any{
		"dir":         str,
		"interpreter": map[string]any{"type": "array", "items": str},
	}
	for k, v := range inputs {
		if k != "connection" {
			localInputs[k] = v
		}
	}
	localInputs["logging"] = map[string]any{"$ref": "#/types/command:local:Logging"}
	localProps := map[string]any{"stdout": str, "stderr": str}
	for k, v := range localInputs {
		localProps[k] = v
	}
	spec := map[string]any{
		"name":        providerName,
		"displayName": "Command (test double)",
		"version":     version,
		"description": "TEST DOUBLE of the Pulumi Command provider v1.2.1, built for picluster: " +
			"command:remote:Command and command:local:Command only.",
		"config":   map[string]any{},
		"provider": map[string]any{},
		"resources": map[string]any{
			commandType: map[string]any{
				"description":     "A command to run on a remote host over SSH (test double).",
				"inputProperties": inputs,
				"requiredInputs":  []string{"connection"},
				"properties":      props,
				"required":        []string{"connection", "stdout", "stderr"},
			},
			localCommandType: map[string]any{
				"description":     "A command to run on this machine (test double).",
				"inputProperties": localInputs,
				"properties":      localProps,
				"required":        []string{"stdout", "stderr"},
			},
		},
		"types": map[string]any{
			"command:remote:Connection": map[string]any{
				"type": "object", "properties": connection, "required": []string{"host"},
			},
			"command:remote:ProxyConnection": map[string]any{
				"type": "object", "properties": proxyProps, "required": []string{"host"},
			},
			"command:local:Logging":  loggingEnum,
			"command:remote:Logging": loggingEnum,
		},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		panic(err)
	}
	return string(b)
}
