package main

// The ResourceProviderServer: the engine-facing half of pulumi-go-provider v1.3.0's infer layer,
// reduced to what `command:remote:Command` needs.

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	commandType      = "command:remote:Command"
	localCommandType = "command:local:Command"
	providerType     = "pulumi:providers:command"
)

type server struct {
	pulumirpc.UnimplementedResourceProviderServer
	host    *provider.HostClient
	version string

	mu    sync.Mutex
	host2 *provider.HostClient // set by Attach
}

func newServer(host *provider.HostClient, version string) *server {
	return &server{host: host, version: version}
}

func (s *server) hostClient() *provider.HostClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.host2 != nil {
		return s.host2
	}
	return s.host
}

// --- logging -------------------------------------------------------------------------------------

// logger sends messages about one resource to the engine (Log RPC), as the provider's p.GetLogger.
type logger struct {
	ctx  context.Context
	host *provider.HostClient
	urn  resource.URN
}

func (s *server) logger(ctx context.Context, urn string) *logger {
	return &logger{ctx: ctx, host: s.hostClient(), urn: resource.URN(urn)}
}

// log is a persistent message (shown in the diagnostics); status is an ephemeral one (shown in
// the progress display's Info column only), which is how v1.2.1 streams command output.
func (l *logger) log(sev diag.Severity, msg string)    { l.send(sev, msg, false) }
func (l *logger) status(sev diag.Severity, msg string) { l.send(sev, msg, true) }
func (l *logger) debug(msg string)                     { l.send(diag.Debug, msg, false) }

func (l *logger) send(sev diag.Severity, msg string, ephemeral bool) {
	if l.host != nil {
		var err error
		if ephemeral {
			err = l.host.LogStatus(l.ctx, sev, l.urn, msg)
		} else {
			err = l.host.Log(l.ctx, sev, l.urn, msg)
		}
		if err == nil {
			return
		}
	}
	fmt.Fprintf(os.Stderr, "pulumi-command test double [%s] %s: %s\n", sev, l.urn, msg)
}

type lockedWriter struct {
	mu sync.Mutex
	w  interface{ Write([]byte) (int, error) }
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// --- marshalling (the options pulumi-go-provider uses) ----------------------------------------------

// oldsAndNews decodes a Diff's or an Update's state and new inputs, with the ignored properties
// of the new inputs taken from the state (ignoreChanges).
func oldsAndNews(
	urn string, olds, news *structpb.Struct, ignoreChanges []string,
) (resource.PropertyMap, resource.PropertyMap, error) {
	if err := checkType(urn); err != nil {
		return nil, nil, err
	}
	state, err := unmarshal(olds)
	if err != nil {
		return nil, nil, err
	}
	inputs, err := unmarshal(news)
	if err != nil {
		return nil, nil, err
	}
	for _, ignored := range ignoreChanges {
		if v, ok := state[resource.PropertyKey(ignored)]; ok {
			inputs[resource.PropertyKey(ignored)] = v
		}
	}
	return state, inputs, nil
}

func unmarshal(s *structpb.Struct) (resource.PropertyMap, error) {
	m, err := plugin.UnmarshalProperties(s, plugin.MarshalOptions{
		KeepUnknowns: true, SkipNulls: true, KeepResources: true, KeepSecrets: true, KeepOutputValues: true,
	})
	if err != nil {
		return nil, err
	}
	return normalizeMap(m), nil
}

func marshal(m resource.PropertyMap) (*structpb.Struct, error) {
	return plugin.MarshalProperties(m, plugin.MarshalOptions{
		KeepUnknowns: true, SkipNulls: true, KeepResources: true, KeepSecrets: true, KeepOutputValues: true,
	})
}

func checkType(urn string) error {
	if t := string(resource.URN(urn).Type()); t != commandType && t != localCommandType {
		return status.Errorf(codes.Unimplemented,
			"the pulumi-command test double implements only %s and %s, not %s",
			commandType, localCommandType, t)
	}
	return nil
}

func isLocal(urn string) bool { return string(resource.URN(urn).Type()) == localCommandType }

// --- plugin and provider-level RPCs ----------------------------------------------------------------

// GetPluginInfo reports 1.2.1 with semver build metadata "+test-double": it says what this is, and
// build metadata does not count in version comparisons, so the engine still sees the 1.2.1 the
// SDK asks for (no "expected to have version >=1.2.1" warning).
func (s *server) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: s.version + "+test-double"}, nil
}

func (s *server) Attach(_ context.Context, req *pulumirpc.PluginAttach) (*emptypb.Empty, error) {
	host, err := provider.NewHostClient(req.GetAddress())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.host2 = host
	s.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (s *server) GetSchema(_ context.Context, req *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	return &pulumirpc.GetSchemaResponse{Schema: schemaJSON(s.version)}, nil
}

// CheckConfig: the provider has no settings; the inputs are returned as given. (Upstream's
// framework adds "__pulumi-go-provider-version" to them; the double does not claim that.)
func (s *server) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

// DiffConfig is unimplemented upstream too: the engine then reports an unknown diff and never
// replaces the provider.
func (s *server) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return nil, status.Error(codes.Unimplemented, "DiffConfig is not implemented")
}

func (s *server) Configure(ctx context.Context, req *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	s.logger(ctx, "").debug(fmt.Sprintf("pulumi-command %s TEST DOUBLE configured (remote and local Command only)",
		s.version))
	return &pulumirpc.ConfigureResponse{
		AcceptSecrets: true, SupportsPreview: true, AcceptResources: true, AcceptOutputs: true,
	}, nil
}

func (s *server) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// --- resource RPCs -------------------------------------------------------------------------------

func (s *server) Check(ctx context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	if err := checkType(req.GetUrn()); err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews())
	if err != nil {
		return nil, err
	}
	checked, failures := checkCommandInputs(news)
	if isLocal(req.GetUrn()) {
		checked, failures = checkLocalInputs(news)
	}
	inputs, err := marshal(checked)
	if err != nil {
		return nil, err
	}
	resp := &pulumirpc.CheckResponse{Inputs: inputs}
	for _, f := range failures {
		resp.Failures = append(resp.Failures, &pulumirpc.CheckFailure{Property: f.property, Reason: f.reason})
	}
	return resp, nil
}

// Diff compares old inputs with new ones as the infer layer does (resource.PropertyMap.Diff, then
// plugin.NewDetailedDiffFromObjectDiff), so `pulumi preview --diff` shows property paths. Every
// change is an update, except where the schema says replaceOnChanges: `triggers`. As upstream,
// that test is made on the detailed-diff key, so it matches a change of `triggers` as a whole
// (added, removed, or type changed); a changed element ("triggers[0]") is an update from the
// provider, and the replace comes from the SDK's replaceOnChanges ["triggers[*]"].
func (s *server) Diff(ctx context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	state, news, err := oldsAndNews(req.GetUrn(), req.GetOlds(), req.GetNews(), req.GetIgnoreChanges())
	if err != nil {
		return nil, err
	}
	for k := range news {
		if k == "version" || strings.HasPrefix(string(k), "__") {
			delete(news, k)
		}
	}
	var olds resource.PropertyMap
	if req.GetOldInputs() != nil {
		if olds, err = unmarshal(req.GetOldInputs()); err != nil {
			return nil, err
		}
	} else {
		// An engine that sends no old inputs: take the input properties out of the state.
		olds = resource.PropertyMap{}
		for _, k := range inputKeys {
			if v, ok := state[k]; ok {
				olds[k] = v
			}
		}
	}

	objDiff := olds.Diff(news)
	detailed := plugin.NewDetailedDiffFromObjectDiff(objDiff, false)
	resp := &pulumirpc.DiffResponse{
		Changes:         pulumirpc.DiffResponse_DIFF_NONE,
		HasDetailedDiff: true,
		DetailedDiff:    map[string]*pulumirpc.PropertyDiff{},
	}
	if objDiff.AnyChanges() {
		resp.Changes = pulumirpc.DiffResponse_DIFF_SOME
	}
	diffs, replaces := map[string]bool{}, map[string]bool{}
	for path, d := range detailed {
		kind := d.Kind
		if replaceOnChanges[path] {
			kind = kind.AsReplace()
		}
		head := path
		if pp, err := resource.ParsePropertyPath(path); err == nil && len(pp) > 0 {
			if h, ok := pp[0].(string); ok {
				head = h
			}
		}
		diffs[head] = true
		if kind.IsReplace() {
			replaces[head] = true
		}
		resp.DetailedDiff[path] = &pulumirpc.PropertyDiff{Kind: rpcKind(kind), InputDiff: d.InputDiff}
	}
	resp.Diffs = sortedSet(diffs)
	resp.Replaces = sortedSet(replaces)
	return resp, nil
}

// The input properties of the schema, and which of them force a replace (provider:"replaceOnChanges").
var (
	inputKeys = []resource.PropertyKey{"connection", "create", "update", "delete", "stdin", "environment",
		"logging", "triggers", "addPreviousOutputInEnv", "dir", "interpreter"}
	replaceOnChanges = map[string]bool{"triggers": true}
)

func rpcKind(k plugin.DiffKind) pulumirpc.PropertyDiff_Kind {
	switch k {
	case plugin.DiffAdd:
		return pulumirpc.PropertyDiff_ADD
	case plugin.DiffAddReplace:
		return pulumirpc.PropertyDiff_ADD_REPLACE
	case plugin.DiffDelete:
		return pulumirpc.PropertyDiff_DELETE
	case plugin.DiffDeleteReplace:
		return pulumirpc.PropertyDiff_DELETE_REPLACE
	case plugin.DiffUpdateReplace:
		return pulumirpc.PropertyDiff_UPDATE_REPLACE
	default:
		return pulumirpc.PropertyDiff_UPDATE
	}
}

func sortedSet(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// outputs are the inputs plus stdout and stderr, with `connection` secret (as upstream, where the
// output mirrors the secret input).
func outputs(inputs resource.PropertyMap, stdout, stderr resource.PropertyValue) resource.PropertyMap {
	out := inputs.Copy()
	if c, ok := out["connection"]; ok && !c.IsNull() {
		out["connection"] = makeSecret(c)
	}
	out["stdout"] = stdout
	out["stderr"] = stderr
	return out
}

func unknownString() resource.PropertyValue { return resource.MakeComputed(resource.NewProperty("")) }

func (s *server) Create(ctx context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	if err := checkType(req.GetUrn()); err != nil {
		return nil, err
	}
	inputs, err := unmarshal(req.GetProperties())
	if err != nil {
		return nil, err
	}
	urn := resource.URN(req.GetUrn())
	id, err := resource.NewUniqueHex(urn.Name(), 8, 0)
	if err != nil {
		return nil, err
	}
	if req.GetPreview() {
		// stdout/stderr are not known until the command has run.
		return createResponse(id, outputs(inputs, unknownString(), unknownString()))
	}
	args, err := decode(req.GetUrn(), inputs)
	if err != nil {
		return nil, fmt.Errorf("invalid inputs: %w", err)
	}
	if args.Create != nil {
		if err := args.run(ctx, s.logger(ctx, req.GetUrn()), "create", *args.Create); err != nil {
			return nil, err
		}
	}
	return createResponse(id, outputs(inputs, resource.NewProperty(args.Stdout), resource.NewProperty(args.Stderr)))
}

func createResponse(id string, props resource.PropertyMap) (*pulumirpc.CreateResponse, error) {
	st, err := marshal(props)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: id, Properties: st}, nil
}

// Update runs `update`, or `create` when there is no `update`, with the new inputs and the previous
// stdout/stderr (PULUMI_COMMAND_STDOUT/STDERR). In a preview stdout/stderr become unknown when an
// input differs from the state, as the infer layer's default computed-ness flow does.
func (s *server) Update(ctx context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	state, news, err := oldsAndNews(req.GetUrn(), req.GetOlds(), req.GetNews(), req.GetIgnoreChanges())
	if err != nil {
		return nil, err
	}
	oldStdout, oldStderr := state["stdout"], state["stderr"]
	if !oldStdout.IsString() {
		oldStdout = resource.NewProperty("")
	}
	if !oldStderr.IsString() {
		oldStderr = resource.NewProperty("")
	}
	if req.GetPreview() {
		changed := false
		for k, v := range news {
			if v.ContainsUnknowns() {
				changed = true
			} else if old, ok := state[k]; ok && !old.DeepEquals(v) {
				changed = true
			}
		}
		if changed {
			return updateResponse(outputs(news, unknownString(), unknownString()))
		}
		return updateResponse(outputs(news, oldStdout, oldStderr))
	}
	args, err := decode(req.GetUrn(), news)
	if err != nil {
		return nil, fmt.Errorf("invalid inputs: %w", err)
	}
	args.Stdout, args.Stderr = oldStdout.StringValue(), oldStderr.StringValue()
	lg := s.logger(ctx, req.GetUrn())
	switch {
	case args.Update != nil:
		err = args.run(ctx, lg, "update", *args.Update)
	case args.Create != nil:
		err = args.run(ctx, lg, "update (create command)", *args.Create)
	}
	if err != nil {
		return nil, err
	}
	return updateResponse(outputs(news, resource.NewProperty(args.Stdout), resource.NewProperty(args.Stderr)))
}

func updateResponse(props resource.PropertyMap) (*pulumirpc.UpdateResponse, error) {
	st, err := marshal(props)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: st}, nil
}

// Delete runs `delete`, if any, with everything taken from the state being deleted: its
// connection, stdin, environment, logging and stdout/stderr.
func (s *server) Delete(ctx context.Context, req *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	if err := checkType(req.GetUrn()); err != nil {
		return nil, err
	}
	state, err := unmarshal(req.GetProperties())
	if err != nil {
		return nil, err
	}
	args, err := decode(req.GetUrn(), state)
	if err != nil {
		return nil, err
	}
	if args.Delete == nil {
		return &emptypb.Empty{}, nil
	}
	if err := args.run(ctx, s.logger(ctx, req.GetUrn()), "delete", *args.Delete); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Read returns the state unchanged (upstream implements no Read: the infer default echoes it).
func (s *server) Read(ctx context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	if err := checkType(req.GetUrn()); err != nil {
		return nil, err
	}
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}
