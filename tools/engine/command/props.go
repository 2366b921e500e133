package main

// Property-map helpers and the typed view of a Command's inputs/state.
//
// Inputs and state travel as resource.PropertyMap so that secretness and unknowns survive exactly
// as the engine sent them; only when a command is about to run are they read into plain Go values.

import (
	"fmt"
	"math"
	"sort"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// Defaults of the v1.2.1 schema (connection.go Annotate: SetDefault).
const (
	defaultUser           = "root"
	defaultPort           = 22.0
	defaultDialErrorLimit = 10 // -1 = unlimited
	defaultPerDialTimeout = 15 // seconds, 0 = no maximum
)

// Logging values (logging.go).
const (
	logStdout          = "stdout"
	logStderr          = "stderr"
	logStdoutAndStderr = "stdoutAndStderr"
	logNone            = "none"
)

// normalize turns engine output values into the plain/secret/computed forms (dependencies are of
// no use to a custom resource's state), recursively.
func normalize(v resource.PropertyValue) resource.PropertyValue {
	switch {
	case v.IsOutput():
		o := v.OutputValue()
		var r resource.PropertyValue
		if !o.Known {
			r = resource.MakeComputed(resource.NewProperty(""))
		} else {
			r = normalize(o.Element)
		}
		if o.Secret && !r.IsSecret() {
			r = resource.MakeSecret(r)
		}
		return r
	case v.IsSecret():
		return resource.MakeSecret(normalize(v.SecretValue().Element))
	case v.IsArray():
		arr := v.ArrayValue()
		out := make([]resource.PropertyValue, len(arr))
		for i, e := range arr {
			out[i] = normalize(e)
		}
		return resource.NewProperty(out)
	case v.IsObject():
		return resource.NewProperty(normalizeMap(v.ObjectValue()))
	}
	return v
}

func normalizeMap(m resource.PropertyMap) resource.PropertyMap {
	if m == nil {
		return resource.PropertyMap{}
	}
	out := make(resource.PropertyMap, len(m))
	for k, v := range m {
		out[k] = normalize(v)
	}
	return out
}

// reveal strips secret wrappers (all levels); computed values are reported by known=false.
func reveal(v resource.PropertyValue) (plain resource.PropertyValue, known bool) {
	for v.IsSecret() {
		v = v.SecretValue().Element
	}
	if v.IsComputed() {
		return v, false
	}
	return v, true
}

func makeSecret(v resource.PropertyValue) resource.PropertyValue {
	if v.IsSecret() {
		return v
	}
	return resource.MakeSecret(v)
}

func containsUnknowns(v resource.PropertyValue) bool { return v.ContainsUnknowns() }

// checkFailure mirrors a p.CheckFailure: the property path and why it was refused.
type checkFailure struct{ property, reason string }

// checkCommandInputs applies the schema's defaults and secretness to a Command's inputs, as the
// infer layer's default Check does (decode into CommandInputs, applyDefaults, applySecrets).
// Values that are still unknown (preview) are left alone.
func checkCommandInputs(news resource.PropertyMap) (resource.PropertyMap, []checkFailure) {
	out := news.Copy()
	var failures []checkFailure
	fail := func(path, format string, a ...any) {
		failures = append(failures, checkFailure{path, fmt.Sprintf(format, a...)})
	}
	for _, k := range []resource.PropertyKey{"create", "update", "delete", "stdin", "logging"} {
		if v, ok := out[k]; ok {
			if p, known := reveal(v); known && !p.IsNull() && !p.IsString() {
				fail(string(k), "expected a string, got %s", p.TypeString())
			}
		}
	}
	if v, ok := out["addPreviousOutputInEnv"]; ok {
		if p, known := reveal(v); known && !p.IsNull() && !p.IsBool() {
			fail("addPreviousOutputInEnv", "expected a boolean, got %s", p.TypeString())
		}
	}
	if v, ok := out["environment"]; ok {
		if p, known := reveal(v); known && !p.IsNull() {
			if !p.IsObject() {
				fail("environment", "expected a map of strings, got %s", p.TypeString())
			} else {
				for ek, ev := range p.ObjectValue() {
					if pe, known := reveal(ev); known && !pe.IsString() {
						fail("environment."+string(ek), "expected a string, got %s", pe.TypeString())
					}
				}
			}
		}
	}
	if v, ok := out["triggers"]; ok {
		if p, known := reveal(v); known && !p.IsNull() && !p.IsArray() {
			fail("triggers", "expected an array, got %s", p.TypeString())
		}
	}

	conn, ok := out["connection"]
	if !ok || conn.IsNull() {
		fail("connection", "Missing required field 'connection' on 'remote.CommandInputs'")
		return out, failures
	}
	// The provider marks `connection` secret (provider:"secret" on the field), and inside it
	// password, privateKey and privateKeyPassword.
	plain, known := reveal(conn)
	if known {
		if !plain.IsObject() {
			fail("connection", "expected an object, got %s", plain.TypeString())
			return out, failures
		}
		c := plain.ObjectValue().Copy()
		failures = append(failures, checkConnection(c, "connection")...)
		plain = resource.NewProperty(c)
	}
	out["connection"] = makeSecret(plain)
	return out, failures
}

func checkConnection(c resource.PropertyMap, path string) []checkFailure {
	var failures []checkFailure
	fail := func(p, format string, a ...any) {
		failures = append(failures, checkFailure{path + "." + p, fmt.Sprintf(format, a...)})
	}
	if h, ok := c["host"]; !ok || h.IsNull() {
		fail("host", "Missing required field 'host' on 'remote.Connection'")
	}
	for _, k := range []resource.PropertyKey{"host", "user", "password", "privateKey", "privateKeyPassword",
		"agentSocketPath", "hostKey"} {
		if v, ok := c[k]; ok {
			if p, known := reveal(v); known && !p.IsNull() && !p.IsString() {
				fail(string(k), "expected a string, got %s", p.TypeString())
			}
		}
	}
	for _, k := range []resource.PropertyKey{"port", "dialErrorLimit", "perDialTimeout"} {
		if v, ok := c[k]; ok {
			if p, known := reveal(v); known && !p.IsNull() && !p.IsNumber() {
				fail(string(k), "expected a number, got %s", p.TypeString())
			}
		}
	}
	if v, ok := c["proxy"]; ok && !v.IsNull() {
		fail("proxy", "connection.proxy (bastion host) is not supported by the pulumi-command test double; "+
			"the real pulumi-command provider could not be built here")
	}
	setDefault := func(k resource.PropertyKey, v resource.PropertyValue) {
		if cur, ok := c[k]; !ok || cur.IsNull() {
			c[k] = v
		}
	}
	setDefault("user", resource.NewProperty(defaultUser))
	setDefault("port", resource.NewProperty(defaultPort))
	setDefault("dialErrorLimit", resource.NewProperty(float64(defaultDialErrorLimit)))
	setDefault("perDialTimeout", resource.NewProperty(float64(defaultPerDialTimeout)))
	for _, k := range []resource.PropertyKey{"password", "privateKey", "privateKeyPassword"} {
		if v, ok := c[k]; ok && !v.IsNull() {
			c[k] = makeSecret(v)
		}
	}
	return failures
}

// commandArgs is the plain view of a Command's inputs or state, read just before running.
type commandArgs struct {
	Create, Update, Delete, Stdin, Logging *string
	Environment                            map[string]string
	AddPreviousOutputInEnv                 *bool
	Connection                             connection
	Stdout, Stderr                         string
	// command:local:Command only (local.go): run on this machine, not over SSH.
	Local       bool
	Dir         *string
	Interpreter []string
}

type connection struct {
	Host, User, Password, PrivateKey, PrivateKeyPassword, AgentSocketPath, HostKey *string
	Port                                                                           float64
	DialErrorLimit, PerDialTimeout                                                 int
	HasProxy                                                                       bool
}

func optString(m resource.PropertyMap, k resource.PropertyKey) (*string, error) {
	v, ok := m[k]
	if !ok {
		return nil, nil
	}
	p, known := reveal(v)
	if !known {
		return nil, fmt.Errorf("%s is unknown", k)
	}
	if p.IsNull() {
		return nil, nil
	}
	if !p.IsString() {
		return nil, fmt.Errorf("%s: expected a string, got %s", k, p.TypeString())
	}
	s := p.StringValue()
	return &s, nil
}

func optNumber(m resource.PropertyMap, k resource.PropertyKey, def float64) (float64, error) {
	v, ok := m[k]
	if !ok {
		return def, nil
	}
	p, known := reveal(v)
	if !known {
		return 0, fmt.Errorf("%s is unknown", k)
	}
	if p.IsNull() {
		return def, nil
	}
	if !p.IsNumber() {
		return 0, fmt.Errorf("%s: expected a number, got %s", k, p.TypeString())
	}
	return p.NumberValue(), nil
}

// decode reads a Command's inputs or state for the resource type of `urn`.
func decode(urn string, m resource.PropertyMap) (commandArgs, error) {
	if isLocal(urn) {
		return decodeLocal(m)
	}
	return decodeCommand(m)
}

// decodeCommand reads inputs or state (all values known) into plain values, with the schema's
// defaults for anything missing.
func decodeCommand(m resource.PropertyMap) (commandArgs, error) {
	var a commandArgs
	var err error
	for k, dst := range map[resource.PropertyKey]**string{
		"create": &a.Create, "update": &a.Update, "delete": &a.Delete, "stdin": &a.Stdin, "logging": &a.Logging,
	} {
		if *dst, err = optString(m, k); err != nil {
			return a, err
		}
	}
	for k, dst := range map[resource.PropertyKey]*string{"stdout": &a.Stdout, "stderr": &a.Stderr} {
		s, err := optString(m, k)
		if err != nil {
			return a, err
		}
		if s != nil {
			*dst = *s
		}
	}
	if v, ok := m["addPreviousOutputInEnv"]; ok {
		if p, known := reveal(v); known && p.IsBool() {
			b := p.BoolValue()
			a.AddPreviousOutputInEnv = &b
		}
	}
	if v, ok := m["environment"]; ok {
		if p, known := reveal(v); known && p.IsObject() {
			a.Environment = map[string]string{}
			for ek, ev := range p.ObjectValue() {
				if pe, known := reveal(ev); known && pe.IsString() {
					a.Environment[string(ek)] = pe.StringValue()
				}
			}
		}
	}
	cv, ok := m["connection"]
	if !ok {
		return a, fmt.Errorf("missing required property 'connection'")
	}
	cp, known := reveal(cv)
	if !known || !cp.IsObject() {
		return a, fmt.Errorf("connection: expected a known object")
	}
	c := cp.ObjectValue()
	conn := &a.Connection
	for k, dst := range map[resource.PropertyKey]**string{
		"host": &conn.Host, "user": &conn.User, "password": &conn.Password, "privateKey": &conn.PrivateKey,
		"privateKeyPassword": &conn.PrivateKeyPassword, "agentSocketPath": &conn.AgentSocketPath,
		"hostKey": &conn.HostKey,
	} {
		if *dst, err = optString(c, k); err != nil {
			return a, fmt.Errorf("connection.%w", err)
		}
	}
	if conn.User == nil {
		u := defaultUser
		conn.User = &u
	}
	if conn.Port, err = optNumber(c, "port", defaultPort); err != nil {
		return a, fmt.Errorf("connection.%w", err)
	}
	n, err := optNumber(c, "dialErrorLimit", defaultDialErrorLimit)
	if err != nil {
		return a, fmt.Errorf("connection.%w", err)
	}
	conn.DialErrorLimit = int(math.Trunc(n))
	if n, err = optNumber(c, "perDialTimeout", defaultPerDialTimeout); err != nil {
		return a, fmt.Errorf("connection.%w", err)
	}
	conn.PerDialTimeout = int(math.Trunc(n))
	if v, ok := c["proxy"]; ok && !v.IsNull() {
		conn.HasProxy = true
	}
	return a, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
