package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/pgaudit-cdc/pgaudit-cdc/cli"
	"github.com/pgaudit-cdc/pgaudit-cdc/metrics"
)

// Paths, relative to this package's directory (go test runs tests there).
const (
	composeFile    = "docker-compose.yml"
	dockerfile     = "Dockerfile"
	k8sDir         = "kubernetes"
	deploymentFile = "kubernetes/deployment.yaml"
	alertsFile     = "prometheus/alerts.yaml"
	dashboardFile  = "grafana/pgaudit-cdc-dashboard.json"
	unitFile       = "systemd/pgaudit-cdc.service"
	envExample     = "systemd/env.example"
	rootGoFile     = "../cli/root.go"
	versionGoFile  = "../internal/version/version.go"
	goModFile      = "../go.mod"
)

// pgauditServices are the compose services that run the pgaudit-cdc image.
var pgauditServices = []string{"pgaudit-cdc", "pgaudit-cdc-init"}

// ---- helpers ----------------------------------------------------------------

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return b
}

// yamlDocs decodes every document of a (possibly multi-document) YAML file,
// skipping empty documents.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, path)))
	var docs []map[string]any
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

func yamlDoc(t *testing.T, path string) map[string]any {
	t.Helper()
	docs := yamlDocs(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: want 1 YAML document, got %d", path, len(docs))
	}
	return docs[0]
}

// dig walks nested maps and lists: keys are map keys or list indexes.
func dig(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func digString(v any, keys ...any) string {
	s, _ := dig(v, keys...).(string)
	return s
}

func digList(v any, keys ...any) []any {
	l, _ := dig(v, keys...).([]any)
	return l
}

func digMap(v any, keys ...any) map[string]any {
	m, _ := dig(v, keys...).(map[string]any)
	return m
}

func deployYAMLFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no YAML files found under deploy/")
	}
	return files
}

// ---- YAML and Kubernetes ----------------------------------------------------

func TestYAMLFilesParse(t *testing.T) {
	for _, path := range deployYAMLFiles(t) {
		t.Run(path, func(t *testing.T) {
			if len(yamlDocs(t, path)) == 0 {
				t.Errorf("%s holds no YAML document", path)
			}
		})
	}
}

// k8sObjects returns every object of the manifests in deploy/kubernetes,
// keyed by "Kind/name", with the file each came from.
func k8sObjects(t *testing.T) (map[string]map[string]any, map[string]string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	objs := map[string]map[string]any{}
	from := map[string]string{}
	for _, f := range files {
		for i, doc := range yamlDocs(t, f) {
			api, kind := digString(doc, "apiVersion"), digString(doc, "kind")
			if api == "" || kind == "" {
				t.Errorf("%s: document %d: missing apiVersion or kind", f, i)
				continue
			}
			name := digString(doc, "metadata", "name")
			if kind == "Kustomization" {
				name = "kustomization" // a kustomize file, not an API object: no metadata
			}
			if name == "" {
				t.Errorf("%s: %s without metadata.name", f, kind)
				continue
			}
			key := kind + "/" + name
			if _, dup := objs[key]; dup {
				t.Errorf("%s: %s defined twice", f, key)
			}
			objs[key] = doc
			from[key] = f
		}
	}
	return objs, from
}

func mustObj(t *testing.T, objs map[string]map[string]any, key string) map[string]any {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		t.Fatalf("no %s in %s", key, k8sDir)
	}
	return o
}

func TestKubernetesManifests(t *testing.T) {
	objs, from := k8sObjects(t)
	dep := mustObj(t, objs, "Deployment/pgaudit-cdc")
	svc := mustObj(t, objs, "Service/pgaudit-cdc")
	sm := mustObj(t, objs, "ServiceMonitor/pgaudit-cdc")
	cm := mustObj(t, objs, "ConfigMap/pgaudit-cdc")
	secret := mustObj(t, objs, "Secret/pgaudit-cdc")
	kust := mustObj(t, objs, "Kustomization/kustomization")

	if api := digString(dep, "apiVersion"); api != "apps/v1" {
		t.Errorf("Deployment apiVersion %q, want apps/v1", api)
	}
	if api := digString(sm, "apiVersion"); api != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %q, want monitoring.coreos.com/v1", api)
	}

	// Kustomization: every listed resource exists; every manifest but the
	// example Secret is listed.
	listed := map[string]bool{}
	for _, r := range digList(kust, "resources") {
		name, _ := r.(string)
		listed[name] = true
		if _, err := os.Stat(filepath.Join(k8sDir, name)); err != nil {
			t.Errorf("kustomization.yaml lists %q: %v", name, err)
		}
	}
	for key, f := range from {
		base := filepath.Base(f)
		if base == "kustomization.yaml" || base == "secret.example.yaml" {
			continue
		}
		if !listed[base] {
			t.Errorf("%s (%s) is not listed in kustomization.yaml", base, key)
		}
	}

	// Deployment.
	spec := digMap(dep, "spec")
	if r, _ := spec["replicas"].(int); r != 2 {
		t.Errorf("replicas = %v, want 2 (active + hot standby)", spec["replicas"])
	}
	if v, ok := spec["minReadySeconds"].(int); !ok || v != 0 {
		t.Errorf("minReadySeconds = %v, want 0", spec["minReadySeconds"])
	}
	// The standby never becomes ready while another pod holds the slot, so a
	// one-by-one rolling update can never remove the old active pod: the
	// rollout must be allowed to replace every pod at once, without surge.
	if typ := digString(spec, "strategy", "type"); typ == "RollingUpdate" {
		ru := digMap(spec, "strategy", "rollingUpdate")
		if s := fmt.Sprint(ru["maxSurge"]); s != "0" && s != "0%" {
			t.Errorf("rollingUpdate.maxSurge = %v, want 0: a surged pod waits as standby and blocks the rollout", ru["maxSurge"])
		}
		if u := fmt.Sprint(ru["maxUnavailable"]); u != "100%" && u != fmt.Sprint(spec["replicas"]) {
			t.Errorf("rollingUpdate.maxUnavailable = %v, want 100%% (or the replica count): see deployment.yaml", ru["maxUnavailable"])
		}
	} else if typ != "Recreate" {
		t.Errorf("strategy.type = %q, want RollingUpdate or Recreate", typ)
	}
	podLabels := digMap(spec, "template", "metadata", "labels")
	for k, v := range digMap(spec, "selector", "matchLabels") {
		if podLabels[k] != v {
			t.Errorf("Deployment selector %s=%v does not match the pod labels", k, v)
		}
	}
	pod := digMap(spec, "template", "spec")
	if g, _ := pod["terminationGracePeriodSeconds"].(int); g != 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 30", pod["terminationGracePeriodSeconds"])
	}
	if dig(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") == nil {
		t.Error("no preferred podAntiAffinity: the standby should run on another node")
	}
	containers := digList(pod, "containers")
	if len(containers) != 1 {
		t.Fatalf("want 1 container, got %d", len(containers))
	}
	c := containers[0]
	portNames := map[string]int{}
	for _, p := range digList(c, "ports") {
		n, _ := dig(p, "containerPort").(int)
		portNames[digString(p, "name")] = n
	}
	if portNames["metrics"] != 9187 {
		t.Errorf("container port named metrics = %d, want 9187", portNames["metrics"])
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := digString(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %q", probe, got, path)
		}
		port := dig(c, probe, "httpGet", "port")
		if name, ok := port.(string); ok {
			if _, known := portNames[name]; !known {
				t.Errorf("%s port %q is not a container port name", probe, name)
			}
		} else if port != 9187 {
			t.Errorf("%s port %v, want metrics or 9187", probe, port)
		}
	}
	nonRoot := dig(pod, "securityContext", "runAsNonRoot") == true || dig(c, "securityContext", "runAsNonRoot") == true
	if !nonRoot {
		t.Error("runAsNonRoot is not true")
	}
	if dig(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Error("readOnlyRootFilesystem is not true")
	}
	// With a read-only root, the spill directory is a volume of its own
	// (run refuses to start with one it cannot write).
	spillDir := ""
	for _, e := range digList(c, "env") {
		if digString(e, "name") == "PGAUDIT_SPILL_DIR" {
			spillDir = digString(e, "value")
		}
	}
	spillVolume := ""
	for _, m := range digList(c, "volumeMounts") {
		if spillDir != "" && digString(m, "mountPath") == spillDir && dig(m, "readOnly") != true {
			spillVolume = digString(m, "name")
		}
	}
	emptyDir := false
	for _, v := range digList(pod, "volumes") {
		if digString(v, "name") == spillVolume && dig(v, "emptyDir") != nil {
			emptyDir = digString(v, "emptyDir", "sizeLimit") != ""
		}
	}
	if !emptyDir {
		t.Errorf("PGAUDIT_SPILL_DIR %q is not a writable emptyDir volume with a sizeLimit", spillDir)
	}
	if dig(c, "securityContext", "allowPrivilegeEscalation") != false {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if drop := digList(c, "securityContext", "capabilities", "drop"); !slices.Contains(drop, any("ALL")) {
		t.Errorf("capabilities.drop = %v, want ALL", drop)
	}
	for _, kind := range []string{"requests", "limits"} {
		for _, res := range []string{"cpu", "memory"} {
			if digString(c, "resources", kind, res) == "" {
				t.Errorf("resources.%s.%s is not set", kind, res)
			}
		}
	}
	// The container reads the ConfigMap and the Secret that exist here.
	var cmRefs []string
	for _, ef := range digList(c, "envFrom") {
		if n := digString(ef, "configMapRef", "name"); n != "" {
			cmRefs = append(cmRefs, n)
		}
		if n := digString(ef, "secretRef", "name"); n != "" && n != digString(secret, "metadata", "name") {
			t.Errorf("envFrom secretRef %q: no such Secret", n)
		}
	}
	if !slices.Contains(cmRefs, digString(cm, "metadata", "name")) {
		t.Errorf("the container does not read ConfigMap %q (envFrom: %v)", digString(cm, "metadata", "name"), cmRefs)
	}
	secretKeys := digMap(secret, "stringData")
	for _, e := range digList(c, "env") {
		if ref := digMap(e, "valueFrom", "secretKeyRef"); ref != nil {
			if ref["name"] != digString(secret, "metadata", "name") {
				t.Errorf("env %s reads Secret %v, want %s", digString(e, "name"), ref["name"], digString(secret, "metadata", "name"))
			}
			if _, ok := secretKeys[fmt.Sprint(ref["key"])]; !ok {
				t.Errorf("env %s reads key %v, missing from secret.example.yaml", digString(e, "name"), ref["key"])
			}
		}
	}
	if cm := digMap(cm, "data"); cm["METRICS_ADDR"] != ":9187" {
		t.Errorf("ConfigMap METRICS_ADDR = %v, want :9187 (probes and Service use port 9187)", cm["METRICS_ADDR"])
	}

	// Service: selects the pods, exposes port "metrics".
	for k, v := range digMap(svc, "spec", "selector") {
		if podLabels[k] != v {
			t.Errorf("Service selector %s=%v does not match the pod labels", k, v)
		}
	}
	var svcPort bool
	for _, p := range digList(svc, "spec", "ports") {
		if digString(p, "name") == "metrics" && dig(p, "port") == 9187 {
			svcPort = true
		}
	}
	if !svcPort {
		t.Error("Service has no port named metrics on 9187")
	}

	// ServiceMonitor: selects the Service, scrapes port "metrics".
	svcLabels := digMap(svc, "metadata", "labels")
	sel := digMap(sm, "spec", "selector", "matchLabels")
	if len(sel) == 0 {
		t.Error("ServiceMonitor has no selector.matchLabels")
	}
	for k, v := range sel {
		if svcLabels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%v does not match the Service labels", k, v)
		}
	}
	if digString(sm, "spec", "endpoints", 0, "port") != "metrics" {
		t.Error("ServiceMonitor endpoint port is not metrics")
	}
}

// ---- compose ----------------------------------------------------------------

func TestCompose(t *testing.T) {
	doc := yamlDoc(t, composeFile)
	services := digMap(doc, "services")
	for _, name := range append([]string{"postgres", "audit-stream"}, pgauditServices...) {
		if services[name] == nil {
			t.Fatalf("compose: no service %q", name)
		}
	}
	pgCmd := fmt.Sprint(dig(services, "postgres", "command"))
	for _, want := range []string{"wal_level=logical", "max_replication_slots=", "max_wal_senders="} {
		if !strings.Contains(pgCmd, want) {
			t.Errorf("postgres command %s lacks %s", pgCmd, want)
		}
	}
	for _, name := range []string{"postgres", "audit-stream"} {
		if dig(services, name, "healthcheck", "test") == nil {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	if !strings.Contains(fmt.Sprint(dig(services, "audit-stream", "healthcheck", "test")), "/healthz") {
		t.Error("audit-stream healthcheck does not probe /healthz")
	}
	for _, name := range pgauditServices {
		if digString(services, name, "image") == "" && dig(services, name, "build") == nil {
			t.Errorf("service %s has neither image nor build (merge key lost?)", name)
		}
		if digString(services, name, "build", "dockerfile") != "deploy/Dockerfile" {
			t.Errorf("service %s does not build deploy/Dockerfile", name)
		}
		deps := digMap(services, name, "depends_on")
		if len(deps) == 0 {
			t.Errorf("service %s has no depends_on", name)
		}
		for dep, v := range deps {
			if services[dep] == nil {
				t.Errorf("service %s depends on unknown service %s", name, dep)
			}
			if digString(v, "condition") == "" {
				t.Errorf("service %s: depends_on %s without a condition", name, dep)
			}
		}
	}
	if digString(services, "pgaudit-cdc", "depends_on", "pgaudit-cdc-init", "condition") != "service_completed_successfully" {
		t.Error("pgaudit-cdc should start after pgaudit-cdc-init completed")
	}
	env := composeEnv(t, services["pgaudit-cdc"])
	for _, want := range []string{"DATABASE_URL", "AUDIT_STREAM_URL", "METRICS_ADDR"} {
		if env[want] == "" {
			t.Errorf("pgaudit-cdc service does not set %s", want)
		}
	}
	if env["METRICS_ADDR"] != ":9187" {
		t.Errorf("METRICS_ADDR = %q, want :9187", env["METRICS_ADDR"])
	}
	if got := commandArgs(t, dig(services, "pgaudit-cdc-init", "command")); len(got) == 0 || got[0] != "watch" {
		t.Errorf("pgaudit-cdc-init command %v, want watch ...", got)
	}
}

// composeEnv reads a service's environment, in map or list form.
func composeEnv(t *testing.T, svc any) map[string]string {
	t.Helper()
	env := map[string]string{}
	switch e := dig(svc, "environment").(type) {
	case map[string]any:
		for k, v := range e {
			env[k] = fmt.Sprint(v)
		}
	case []any:
		for _, item := range e {
			k, v, _ := strings.Cut(fmt.Sprint(item), "=")
			env[k] = v
		}
	case nil:
	default:
		t.Fatalf("environment of unexpected type %T", e)
	}
	return env
}

func commandArgs(t *testing.T, v any) []string {
	t.Helper()
	switch c := v.(type) {
	case string:
		return strings.Fields(c)
	case []any:
		out := make([]string, len(c))
		for i, a := range c {
			out[i] = fmt.Sprint(a)
		}
		return out
	case nil:
		return nil
	}
	t.Fatalf("command of unexpected type %T", v)
	return nil
}

// ---- Dockerfile -------------------------------------------------------------

// dockerInstructions returns the Dockerfile's instructions, continuation
// lines joined and comments dropped.
func dockerInstructions(t *testing.T) [][2]string {
	t.Helper()
	var out [][2]string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, dockerfile)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		full := strings.TrimSpace(cur.String())
		cur.Reset()
		if full == "" {
			continue
		}
		instr, rest, _ := strings.Cut(full, " ")
		out = append(out, [2]string{strings.ToUpper(instr), strings.TrimSpace(rest)})
	}
	if cur.Len() > 0 {
		t.Fatal("Dockerfile ends with a line continuation")
	}
	return out
}

func TestDockerfile(t *testing.T) {
	instrs := dockerInstructions(t)
	var stages [][][2]string
	for _, in := range instrs {
		if in[0] == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in[0] != "ARG" {
				t.Fatalf("Dockerfile: %s before the first FROM", in[0])
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final stage", len(stages))
	}

	// Build stage: golang at the module's Go version, static, version stamped.
	build := stages[0]
	from := strings.Fields(build[0][1])
	if len(from) < 3 || !strings.EqualFold(from[1], "AS") {
		t.Errorf("first stage %q is not named (FROM image AS name)", build[0][1])
	}
	goVersion := goDirective(t)
	if want := "golang:" + goVersion; !strings.HasPrefix(from[0], want) {
		t.Errorf("build stage image %s, want %s (go.mod's go directive)", from[0], want)
	}
	var buildCmd string
	for _, in := range build {
		if in[0] == "RUN" && strings.Contains(in[1], "go build") {
			buildCmd = in[1]
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("go build command lacks %s: %q", want, buildCmd)
		}
	}
	// Every -X target is a string variable of its package.
	xflags := regexp.MustCompile(`-X\s+([^\s"=]+)=`).FindAllStringSubmatch(buildCmd, -1)
	if len(xflags) == 0 {
		t.Error("go build command sets no -X version variable")
	}
	versionVars := packageVars(t, versionGoFile)
	for _, x := range xflags {
		pkg, name, _ := strings.Cut(x[1][strings.LastIndex(x[1], "/")+1:], ".")
		if x[1] != "github.com/pgaudit-cdc/pgaudit-cdc/internal/version."+name || pkg != "version" {
			t.Errorf("-X %s: want a variable of github.com/pgaudit-cdc/pgaudit-cdc/internal/version", x[1])
			continue
		}
		if !versionVars[name] {
			t.Errorf("-X %s: internal/version has no package variable %s", x[1], name)
		}
	}

	// Final stage: distroless, non-root, entrypoint.
	final := stages[len(stages)-1]
	if img := strings.Fields(final[0][1])[0]; !strings.Contains(img, "distroless") {
		t.Errorf("final stage image %s is not distroless", img)
	}
	var user, entrypoint, cmd string
	var exposed []string
	for _, in := range final {
		switch in[0] {
		case "USER":
			user = in[1]
		case "ENTRYPOINT":
			entrypoint = in[1]
		case "CMD":
			cmd = in[1]
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in[1])...)
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		t.Errorf("final stage USER %q is root or unset", user)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || len(ep) == 0 || !strings.HasSuffix(ep[0], "pgaudit-cdc") {
		t.Errorf("ENTRYPOINT %q is not the exec form of pgaudit-cdc (%v)", entrypoint, err)
	}
	var args []string
	if err := json.Unmarshal([]byte(cmd), &args); err != nil || !slices.Equal(args, []string{"run"}) {
		t.Errorf("CMD %q, want [\"run\"] (%v)", cmd, err)
	}
	if !slices.Contains(exposed, "9187") {
		t.Errorf("EXPOSE %v lacks 9187", exposed)
	}
	for _, in := range instrs {
		if in[0] == "HEALTHCHECK" {
			t.Error("HEALTHCHECK cannot run in distroless (no shell)")
		}
	}
}

func goDirective(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^go\s+(\d+\.\d+)`).FindSubmatch(readFile(t, goModFile))
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// packageVars returns the package-level variable names declared in a Go file.
func packageVars(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, s := range gd.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				vars[n.Name] = true
			}
		}
	}
	return vars
}

// dockerEnv returns the ENV keys of the Dockerfile.
func dockerEnv(t *testing.T) []string {
	t.Helper()
	var keys []string
	re := regexp.MustCompile(`(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=`)
	for _, in := range dockerInstructions(t) {
		if in[0] != "ENV" {
			continue
		}
		if !strings.Contains(in[1], "=") { // legacy "ENV KEY value"
			keys = append(keys, strings.Fields(in[1])[0])
			continue
		}
		for _, m := range re.FindAllStringSubmatch(in[1], -1) {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// ---- systemd ----------------------------------------------------------------

// unitSections parses a systemd unit: section -> key -> values.
func unitSections(t *testing.T) map[string]map[string][]string {
	t.Helper()
	sections := map[string]map[string][]string{}
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, unitFile)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = line[1 : len(line)-1]
			sections[cur] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", unitFile, n, line)
			}
			sections[cur][strings.TrimSpace(k)] = append(sections[cur][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return sections
}

func TestSystemdUnit(t *testing.T) {
	s := unitSections(t)
	for _, sec := range []string{"Unit", "Service", "Install"} {
		if s[sec] == nil {
			t.Fatalf("unit has no [%s] section", sec)
		}
	}
	svc := s["Service"]
	one := func(key string) string {
		if len(svc[key]) == 0 {
			return ""
		}
		return svc[key][len(svc[key])-1]
	}
	if exec := one("ExecStart"); !strings.Contains(exec, "pgaudit-cdc run") {
		t.Errorf("ExecStart %q does not run `pgaudit-cdc run`", exec)
	}
	want := map[string]string{
		"Type":            "simple",
		"EnvironmentFile": "/etc/pgaudit-cdc/env",
		"Restart":         "always",
		"RestartSec":      "2",
		"DynamicUser":     "yes",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"KillSignal":      "SIGTERM",
		"TimeoutStopSec":  "30",
	}
	for k, v := range want {
		if got := one(k); got != v {
			t.Errorf("[Service] %s = %q, want %q", k, got, v)
		}
	}
	if len(s["Install"]["WantedBy"]) == 0 {
		t.Error("[Install] has no WantedBy")
	}
}

// ---- Prometheus alerts ------------------------------------------------------

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleFile struct {
	Groups []struct {
		Name  string      `yaml:"name"`
		Rules []alertRule `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlerts(t *testing.T) []alertRule {
	t.Helper()
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, alertsFile)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var rules []alertRule
	for _, g := range rf.Groups {
		if g.Name == "" {
			t.Error("rule group without a name")
		}
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s holds no rules", alertsFile)
	}
	return rules
}

// balanced reports whether (), [] and {} pair up outside string literals.
func balanced(expr string) error {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var quote rune
	for i, r := range expr {
		switch {
		case quote != 0:
			if r == quote && (i == 0 || expr[i-1] != '\\') {
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return fmt.Errorf("unbalanced %q at offset %d", r, i)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if quote != 0 {
		return errors.New("unterminated string")
	}
	if len(stack) > 0 {
		return fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	return nil
}

func TestAlerts(t *testing.T) {
	rules := loadAlerts(t)
	seen := map[string]bool{}
	var all strings.Builder
	for _, r := range rules {
		if r.Alert == "" {
			t.Errorf("rule %q is not an alert", r.Record)
			continue
		}
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if strings.TrimSpace(r.Expr) == "" {
			t.Errorf("%s: empty expr", r.Alert)
		}
		if err := balanced(r.Expr); err != nil {
			t.Errorf("%s: expr: %v", r.Alert, err)
		}
		if r.Labels["severity"] == "" {
			t.Errorf("%s: no severity label", r.Alert)
		}
		if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 {
			t.Errorf("%s: want a summary and a description that says what to do", r.Alert)
		}
		for k, v := range r.Annotations {
			if strings.Count(v, "{{") != strings.Count(v, "}}") {
				t.Errorf("%s: annotation %s: unbalanced {{ }}", r.Alert, k)
			}
		}
		all.WriteString(r.Expr + "\n")
	}
	// Each condition the runbook covers has an alert.
	for _, want := range []string{
		"pgaudit_cdc_replication_lag_bytes", "pgaudit_cdc_slot_retained_wal_bytes",
		"pgaudit_cdc_dead_letters_pending", "increase(pgaudit_cdc_dead_letters_total",
		"pgaudit_cdc_database_connected", "pgaudit_cdc_spine_up", "pgaudit_cdc_slot_active",
		"pgaudit_cdc_events_delivered_total", "pgaudit_cdc_publish_retries_total",
		"pgaudit_cdc_spill_full_total", `absent(up{job="pgaudit-cdc"})`,
	} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("no alert expr uses %s", want)
		}
	}
}

// ---- Grafana ----------------------------------------------------------------

type dashPanel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource map[string]any `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

type dashboard struct {
	UID           string      `json:"uid"`
	Title         string      `json:"title"`
	SchemaVersion int         `json:"schemaVersion"`
	Panels        []dashPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// dashPanels flattens rows.
func dashPanels(d dashboard) []dashPanel {
	var out []dashPanel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// dashExprs returns every PromQL expression of the dashboard: targets and
// query variables.
func dashExprs(d dashboard) []string {
	var out []string
	for _, p := range dashPanels(d) {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		switch q := v.Query.(type) {
		case string:
			if v.Type == "query" {
				out = append(out, q)
			}
		case map[string]any:
			if s, ok := q["query"].(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

func TestGrafanaDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want >= 36", d.SchemaVersion)
	}
	var dsVar string
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus datasource variable")
	}
	wantDS := "${" + dsVar + "}"
	ids := map[int]bool{}
	var withTargets int
	var all strings.Builder
	for _, p := range dashPanels(d) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || (p.Type != "row" && (p.GridPos.W == 0 || p.GridPos.H == 0)) {
			t.Errorf("panel %q has no usable gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
			continue
		}
		withTargets++
		if p.Datasource["type"] != "prometheus" || p.Datasource["uid"] != wantDS {
			t.Errorf("panel %q datasource %v, want prometheus %s", p.Title, p.Datasource, wantDS)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: empty expr", p.Title)
			}
			if err := balanced(tg.Expr); err != nil {
				t.Errorf("panel %q: expr %q: %v", p.Title, tg.Expr, err)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: missing or repeated refId %q", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			all.WriteString(tg.Expr + "\n")
		}
	}
	if withTargets < 8 {
		t.Errorf("%d panels with Prometheus targets, want the full set", withTargets)
	}
	for _, want := range []string{
		"pgaudit_cdc_events_delivered_total", "histogram_quantile(0.99, sum by (le) (rate(pgaudit_cdc_commit_to_accepted_seconds_bucket",
		"histogram_quantile(0.5, sum by (le) (rate(pgaudit_cdc_commit_to_accepted_seconds_bucket",
		"pgaudit_cdc_publish_duration_seconds_bucket", "pgaudit_cdc_replication_lag_bytes",
		"pgaudit_cdc_slot_retained_wal_bytes", "pgaudit_cdc_dead_letters_pending",
		"pgaudit_cdc_publish_retries_total", "pgaudit_cdc_database_connected", "pgaudit_cdc_spine_up",
		"pgaudit_cdc_slot_active", "time() - ", "pgaudit_cdc_last_delivered_commit_timestamp_seconds",
		"pgaudit_cdc_build_info",
	} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("no dashboard panel queries %s", want)
		}
	}
}

// ---- metric names -----------------------------------------------------------

// registeredFamilies returns the metric families pgaudit-cdc registers, by
// name, with every labelled vector touched so that it is exported.
func registeredFamilies(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	m := metrics.New()
	// Touch every *Vec field, whatever its label count, by trying label
	// value lists of growing length until one is accepted.
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		get := v.Field(i).MethodByName("GetMetricWithLabelValues")
		if !get.IsValid() {
			continue
		}
		touched := false
		for n := 0; n <= 8 && !touched; n++ {
			vals := make([]string, n)
			for j := range vals {
				vals[j] = "x" + strconv.Itoa(j)
			}
			out := get.CallSlice([]reflect.Value{reflect.ValueOf(vals)})
			touched = out[1].IsNil()
		}
		if !touched {
			t.Fatalf("could not create a child of metrics field %s", v.Type().Field(i).Name)
		}
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]dto.MetricType{}
	for _, f := range fams {
		out[f.GetName()] = f.GetType()
	}
	return out
}

var metricName = regexp.MustCompile(`pgaudit_cdc_[a-z0-9_]+`)

func TestMetricNamesExist(t *testing.T) {
	fams := registeredFamilies(t)
	exprs := map[string]string{} // expr -> where
	for _, r := range loadAlerts(t) {
		exprs[r.Expr] = alertsFile + ": " + r.Alert
	}
	for _, e := range dashExprs(loadDashboard(t)) {
		exprs[e] = dashboardFile
	}
	used := map[string]bool{}
	var unknown []string
	for expr, where := range exprs {
		for _, name := range metricName.FindAllString(expr, -1) {
			used[name] = true
			if _, ok := fams[name]; ok {
				continue
			}
			base := name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suf)
			}
			if typ, ok := fams[base]; ok && base != name &&
				(typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY) &&
				(typ == dto.MetricType_HISTOGRAM || !strings.HasSuffix(name, "_bucket")) {
				continue
			}
			unknown = append(unknown, fmt.Sprintf("%s (in %s)", name, where))
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		var names []string
		for n := range fams {
			if strings.HasPrefix(n, "pgaudit_cdc_") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		t.Errorf("metric names not registered by metrics.New():\n  %s\nregistered:\n  %s",
			strings.Join(unknown, "\n  "), strings.Join(names, "\n  "))
	}
	if len(used) < 10 {
		t.Errorf("only %d pgaudit_cdc metrics found in the alerts and dashboard", len(used))
	}
}

// ---- environment variables and commands --------------------------------------

// cliEnvVars returns the environment variables the CLI reads: the
// envFallbacks table of cli/root.go (not exported), each checked against a
// real flag of the command tree.
func cliEnvVars(t *testing.T) map[string]bool {
	t.Helper()
	src := readFile(t, rootGoFile)
	start := bytes.Index(src, []byte("var envFallbacks"))
	if start < 0 {
		t.Fatalf("%s: no envFallbacks table", rootGoFile)
	}
	end := bytes.Index(src[start:], []byte("\n}\n"))
	if end < 0 {
		t.Fatalf("%s: envFallbacks table not closed", rootGoFile)
	}
	pairs := regexp.MustCompile(`\{\s*"([a-z0-9-]+)"\s*,\s*"([A-Z0-9_]+)"\s*\}`).FindAllSubmatch(src[start:start+end], -1)
	if len(pairs) < 5 {
		t.Fatalf("%s: found only %d envFallbacks entries", rootGoFile, len(pairs))
	}
	root := cli.NewRootCmd()
	env := map[string]bool{}
	for _, p := range pairs {
		if !hasFlag(root, string(p[1])) {
			t.Errorf("envFallbacks entry %s -> %s names no flag of the command tree", p[1], p[2])
		}
		env[string(p[2])] = true
	}
	return env
}

// hasFlag reports whether c or one of its subcommands has the flag name.
func hasFlag(c *cobra.Command, name string) bool {
	if c.PersistentFlags().Lookup(name) != nil || c.Flags().Lookup(name) != nil {
		return true
	}
	for _, sub := range c.Commands() {
		if hasFlag(sub, name) {
			return true
		}
	}
	return false
}

// envFileKeys returns the keys of an env file, commented-out ones included.
func envFileKeys(t *testing.T, path string) []string {
	t.Helper()
	re := regexp.MustCompile(`^#?\s*([A-Z][A-Z0-9_]*)=`)
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, path)))
	for sc.Scan() {
		if m := re.FindStringSubmatch(strings.TrimSpace(sc.Text())); m != nil {
			keys = append(keys, m[1])
		}
	}
	return keys
}

func TestEnvVarsAreReadByTheCLI(t *testing.T) {
	known := cliEnvVars(t)
	used := map[string][]string{} // env -> where
	add := func(where string, names ...string) {
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}

	services := digMap(yamlDoc(t, composeFile), "services")
	for _, name := range pgauditServices {
		for k := range composeEnv(t, services[name]) {
			add(composeFile+" "+name, k)
		}
	}

	objs, _ := k8sObjects(t)
	dep := mustObj(t, objs, "Deployment/pgaudit-cdc")
	for _, c := range digList(dep, "spec", "template", "spec", "containers") {
		for _, e := range digList(c, "env") {
			add(deploymentFile, digString(e, "name"))
		}
		for _, ef := range digList(c, "envFrom") {
			if n := digString(ef, "configMapRef", "name"); n != "" {
				for k := range digMap(mustObj(t, objs, "ConfigMap/"+n), "data") {
					add("ConfigMap/"+n, k)
				}
			}
			if n := digString(ef, "secretRef", "name"); n != "" {
				for k := range digMap(mustObj(t, objs, "Secret/"+n), "stringData") {
					add("Secret/"+n, k)
				}
			}
		}
	}
	for k := range digMap(mustObj(t, objs, "Secret/pgaudit-cdc"), "stringData") {
		add("secret.example.yaml", k)
	}

	units := unitSections(t)
	for _, e := range units["Service"]["Environment"] {
		for _, kv := range strings.Fields(strings.Trim(e, `"`)) {
			k, _, _ := strings.Cut(strings.Trim(kv, `"`), "=")
			add(unitFile, k)
		}
	}
	add(envExample, envFileKeys(t, envExample)...)
	add(dockerfile, dockerEnv(t)...)

	for _, must := range []string{"DATABASE_URL", "AUDIT_STREAM_URL", "METRICS_ADDR"} {
		if len(used[must]) == 0 {
			t.Errorf("no deployment file sets %s", must)
		}
	}
	var bad []string
	for name, where := range used {
		if !known[name] {
			bad = append(bad, fmt.Sprintf("%s (in %s)", name, strings.Join(where, ", ")))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		var names []string
		for n := range known {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Errorf("environment variables pgaudit-cdc does not read:\n  %s\nthe CLI reads: %s",
			strings.Join(bad, "\n  "), strings.Join(names, ", "))
	}
}

// TestCommandsExist runs every pgaudit-cdc command line of the deployment
// files through the real command tree's parser (without running it).
func TestCommandsExist(t *testing.T) {
	lines := map[string][]string{}

	services := digMap(yamlDoc(t, composeFile), "services")
	for _, name := range pgauditServices {
		lines[composeFile+" "+name] = commandArgs(t, dig(services, name, "command"))
	}
	objs, _ := k8sObjects(t)
	for i, c := range digList(mustObj(t, objs, "Deployment/pgaudit-cdc"), "spec", "template", "spec", "containers") {
		if dig(c, "command") != nil {
			t.Errorf("container %d overrides the image ENTRYPOINT (command:); use args:", i)
		}
		lines[fmt.Sprintf("%s container %d", deploymentFile, i)] = commandArgs(t, dig(c, "args"))
	}
	for _, exec := range unitSections(t)["Service"]["ExecStart"] {
		f := strings.Fields(strings.TrimLeft(exec, "-@:+!"))
		lines[unitFile] = f[1:]
	}
	for _, in := range dockerInstructions(t) {
		if in[0] == "CMD" {
			var args []string
			if err := json.Unmarshal([]byte(in[1]), &args); err != nil {
				t.Errorf("Dockerfile CMD %q is not the exec form: %v", in[1], err)
			}
			lines[dockerfile+" CMD"] = args
		}
	}

	for where, args := range lines {
		t.Run(where, func(t *testing.T) {
			if len(args) == 0 {
				t.Fatal("no command")
			}
			root := cli.NewRootCmd()
			cmd, rest, err := root.Find(args)
			if err != nil || cmd == root {
				t.Fatalf("%v: no such pgaudit-cdc command (%v)", args, err)
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatalf("%v: %v", args, err)
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%v: %v", args, err)
			}
			if err := cmd.ValidateRequiredFlags(); err != nil {
				t.Errorf("%v: %v", args, err)
			}
		})
	}
}
