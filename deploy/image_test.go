package deploy_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/objwatch/callback/internal/service"
	"github.com/objwatch/callback/internal/testhelper"
)

// Docker does not run on the machines that test this: the Dockerfile is read with
// BuildKit's own parser and compose.yaml with compose-go, and the test checks they
// agree with each other and with the programs they run.

// instruction is one Dockerfile line: its keyword (lower case), arguments and flags.
type instruction struct {
	cmd   string
	args  []string
	flags []string
	line  int
}

type stage struct {
	from, name string
	body       []instruction
}

func readDockerfile(t *testing.T) []stage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	var stages []stage
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToLower(n.Value), flags: n.Flags, line: n.StartLine}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		switch {
		case in.cmd == "from":
			s := stage{from: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "as") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
		case len(stages) == 0:
			if in.cmd != "arg" {
				t.Errorf("line %d: %s before the first FROM", in.line, in.cmd)
			}
		default:
			stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
		}
	}
	return stages
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.body {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// env is what the stage's ENV lines set.
func (s stage) env() map[string]string {
	out := map[string]string{}
	// The parser gives each pair as three nodes: name, value, and the separator used.
	for _, in := range s.all("env") {
		for i := 0; i+2 < len(in.args); i += 3 {
			out[in.args[i]] = in.args[i+1]
		}
	}
	return out
}

var goBuild = regexp.MustCompile(`go build [^&]*-o (\S+) (\./cmd/\S+)`)

// binaries maps each binary the Dockerfile builds (its path in the build stage) to
// its package, e.g. /out/callback -> ./cmd/callback.
func binaries(s stage) map[string]string {
	out := map[string]string{}
	for _, in := range s.all("run") {
		for _, m := range goBuild.FindAllStringSubmatch(strings.Join(in.args, " "), -1) {
			out[m[1]] = m[2]
		}
	}
	return out
}

// image is what the Dockerfile promises, for the compose checks.
type image struct {
	binaries   map[string]string // path in the runtime image -> ./cmd/...
	entrypoint []string
	exposed    []string
	env        map[string]string
	volumes    []string
}

func readImage(t *testing.T) image {
	t.Helper()
	stages := readDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	build, runtime := stages[0], stages[len(stages)-1]

	if build.env()["CGO_ENABLED"] != "0" {
		t.Errorf("the build stage must set CGO_ENABLED=0 (static binaries), ENV has %v", build.env())
	}
	built := binaries(build)
	for _, pkg := range []string{"./cmd/callback", "./cmd/tester"} {
		if !slices.Contains(mapValues(built), pkg) {
			t.Errorf("the build stage does not build %s: %v", pkg, built)
		}
	}

	if !strings.HasPrefix(runtime.from, "gcr.io/distroless/static") && runtime.from != "scratch" {
		t.Errorf("runtime image %q: want distroless static or scratch", runtime.from)
	}
	users := runtime.all("user")
	if len(users) == 0 {
		t.Error("the runtime stage runs as root: no USER")
	} else if u := strings.Split(users[len(users)-1].args[0], ":")[0]; u == "root" || u == "0" {
		t.Errorf("the runtime stage runs as %q", u)
	}
	for _, s := range stages {
		if len(s.all("healthcheck")) > 0 {
			t.Error("HEALTHCHECK: orchestrators probe /healthz and /readyz instead")
		}
	}

	img := image{binaries: map[string]string{}, env: runtime.env()}
	for _, in := range runtime.all("copy") {
		if !slices.ContainsFunc(in.flags, func(f string) bool { return f == "--from="+build.name || f == "--from=0" }) {
			continue
		}
		dest := in.args[len(in.args)-1]
		for _, src := range in.args[:len(in.args)-1] {
			if pkg, ok := built[src]; ok {
				img.binaries[filepath.Join(dest, filepath.Base(src))] = pkg
			}
		}
	}
	if len(img.binaries) != len(built) {
		t.Errorf("the runtime stage copies %v of the binaries built %v", img.binaries, built)
	}
	if eps := runtime.all("entrypoint"); len(eps) > 0 {
		img.entrypoint = eps[len(eps)-1].args
	}
	for _, in := range runtime.all("expose") {
		img.exposed = append(img.exposed, in.args...)
	}
	for _, in := range runtime.all("volume") {
		img.volumes = append(img.volumes, in.args...)
	}
	if len(img.entrypoint) != 1 || img.binaries[img.entrypoint[0]] != "./cmd/callback" {
		t.Errorf("ENTRYPOINT %v is not the service binary (binaries: %v)", img.entrypoint, img.binaries)
	}
	return img
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	img := readImage(t)
	if addr := img.env["LISTEN_ADDR"]; !slices.Contains(img.exposed, port(addr)) {
		t.Errorf("LISTEN_ADDR %q is not EXPOSEd (%v)", addr, img.exposed)
	}
	if !slices.Contains(img.volumes, img.env["SPOOL_DIR"]) {
		t.Errorf("SPOOL_DIR %q should be a VOLUME (%v): the spool belongs on a local disk", img.env["SPOOL_DIR"], img.volumes)
	}
	checkVariables(t, "Dockerfile ENV", img.env)
}

// serviceVariables are the variables the service reads, from its own -h.
func serviceVariables(t *testing.T) map[string]bool {
	t.Helper()
	var usage bytes.Buffer
	err := service.Run(context.Background(), []string{"-h"}, testhelper.Getenv(nil), io.Discard, &usage)
	if err == nil {
		t.Fatal("Run -h did not stop")
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`env ([A-Z_]+),`).FindAllStringSubmatch(usage.String(), -1) {
		out[m[1]] = true
	}
	if !out["DATABASE_URL"] || !out["SPOOL_DIR"] {
		t.Fatalf("could not read the variables from -h:\n%s", usage.String())
	}
	return out
}

func checkVariables(t *testing.T, where string, env map[string]string) {
	t.Helper()
	vars := serviceVariables(t)
	for k := range env {
		if !vars[k] {
			t.Errorf("%s sets %s, which the service does not read", where, k)
		}
	}
}

func port(addr string) string {
	return addr[strings.LastIndex(addr, ":")+1:]
}

func loadCompose(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: types.Mapping{},
	}, loader.WithProfiles(profiles), func(o *loader.Options) { o.SetProjectName("callback", true) })
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p
}

func TestComposeAgreesWithDockerfile(t *testing.T) {
	t.Parallel()
	img := readImage(t)
	p := loadCompose(t)
	for _, name := range []string{"postgres", "callback", "tester"} {
		if _, ok := p.Services[name]; !ok {
			t.Fatalf("compose.yaml has no service %q (has %v)", name, p.ServiceNames())
		}
	}
	if _, ok := p.Services["prometheus"]; ok {
		t.Error("prometheus starts without the observe profile")
	}

	pg := p.Services["postgres"]
	if pg.HealthCheck == nil || len(pg.HealthCheck.Test) == 0 {
		t.Error("postgres has no healthcheck")
	}
	if !slices.ContainsFunc(pg.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Type == types.VolumeTypeVolume }) {
		t.Error("postgres keeps its data in no named volume")
	}

	// Both programs come from the Dockerfile's image, each run as its own binary.
	run := map[string]string{"callback": "./cmd/callback", "tester": "./cmd/tester"}
	for name, pkg := range run {
		s := p.Services[name]
		if s.Build == nil || s.Build.Dockerfile != "Dockerfile" || s.Build.Context != p.WorkingDir {
			t.Errorf("%s is not built from the Dockerfile at the root: %+v", name, s.Build)
		}
		entry := []string(s.Entrypoint)
		if entry == nil {
			entry = img.entrypoint
		}
		if len(entry) == 0 || img.binaries[entry[0]] != pkg {
			t.Errorf("%s runs %v, not the image's %s binary (%v)", name, entry, pkg, img.binaries)
		}
	}

	svc := p.Services["callback"]
	env := map[string]string{}
	for k, v := range svc.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	checkVariables(t, "compose service callback", env)
	listen := port(env["LISTEN_ADDR"])
	if listen == "" {
		listen = port(img.env["LISTEN_ADDR"])
	}
	if !slices.Contains(img.exposed, listen) {
		t.Errorf("the service listens on %s, the image exposes %v", listen, img.exposed)
	}
	if !publishes(svc, listen) {
		t.Errorf("compose does not publish the service's port %s: %+v", listen, svc.Ports)
	}
	spool := env["SPOOL_DIR"]
	if spool == "" {
		spool = img.env["SPOOL_DIR"]
	}
	if !slices.ContainsFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == spool && v.Type == types.VolumeTypeVolume }) {
		t.Errorf("SPOOL_DIR %s is not on a named volume: %+v", spool, svc.Volumes)
	}
	if dep, ok := svc.DependsOn["postgres"]; !ok || dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("the service does not wait for a healthy postgres: %+v", svc.DependsOn)
	}

	// The tester serves objects where the service looks them up, and sends where it listens.
	tester := p.Services["tester"]
	objects := env["OBJECTS_URL"]
	args := strings.Join(tester.Command, " ")
	if objects != "http://tester:"+argPort(t, tester.Command, "-objects-addr") {
		t.Errorf("OBJECTS_URL %q does not point at the tester's -objects-addr (%s)", objects, args)
	}
	if !strings.Contains(args, "-target http://callback:"+listen+"/callback") {
		t.Errorf("the tester does not send to the service's port %s: %s", listen, args)
	}
	if !slices.Contains(img.exposed, argPort(t, tester.Command, "-objects-addr")) {
		t.Errorf("the tester's object service port is not exposed by the image: %v", img.exposed)
	}
}

func argPort(t *testing.T, args []string, flag string) string {
	t.Helper()
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("%s not in %v", flag, args)
	}
	return port(args[i+1])
}

func publishes(s types.ServiceConfig, port string) bool {
	return slices.ContainsFunc(s.Ports, func(p types.ServicePortConfig) bool { return p.Target == parsePort(port) })
}

func parsePort(s string) uint32 {
	var n uint32
	for _, c := range s {
		n = n*10 + uint32(c-'0')
	}
	return n
}

func TestComposeObserveProfile(t *testing.T) {
	t.Parallel()
	p := loadCompose(t, "observe")
	for _, name := range []string{"prometheus", "grafana"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("the observe profile has no %s", name)
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s, which does not exist: %v", name, v.Source, err)
			}
			if rel, err := filepath.Rel(p.WorkingDir, v.Source); err != nil || !strings.HasPrefix(rel, "deploy") {
				t.Errorf("%s mounts %s, outside deploy/", name, v.Source)
			}
		}
	}
	mounted := func(s types.ServiceConfig, src string) bool {
		return slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Source == filepath.Join(p.WorkingDir, src)
		})
	}
	if !mounted(p.Services["prometheus"], "deploy/prometheus/rules.yml") {
		t.Error("prometheus does not load deploy/prometheus/rules.yml")
	}
	if !mounted(p.Services["grafana"], "deploy/grafana/callback.json") {
		t.Error("grafana does not load deploy/grafana/callback.json")
	}
	// Prometheus scrapes the service by its compose name and port, under the job name
	// the alerts use.
	cfg, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	listen := port(*p.Services["callback"].Environment["LISTEN_ADDR"])
	for _, want := range []string{"job_name: callback", `"callback:` + listen + `"`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("prometheus.yml lacks %s", want)
		}
	}
}
