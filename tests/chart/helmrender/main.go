// helmrender renders a Helm chart the way `helm template` does, with the
// pieces of Helm's engine rebuilt on Go's text/template and Sprig (both from
// Debian's packages; no helm binary, no network).
//
// What it copies from Helm 3 (pkg/engine, pkg/chartutil, pkg/releaseutil):
//   - the function map: Sprig's TxtFuncMap without env/expandenv, plus
//     include, tpl, required, toYaml, mustToYaml, toYamlPretty, fromYaml,
//     fromYamlArray, toJson, mustToJson, fromJson, fromJsonArray and lookup
//     (always an empty map: there is no cluster);
//   - the objects: .Values, .Chart (Chart.yaml's fields, capitalised),
//     .Release, .Capabilities (KubeVersion, APIVersions.Has), .Template,
//     .Files (Get, GetBytes, Lines, Glob);
//   - values: numbers from YAML files become float64 (Helm reads them
//     through JSON), --set integers int64; -f files merge in order, --set
//     on top, then chart defaults fill the gaps and a null deletes a key;
//   - missingkey=zero and "<no value>" erased from the output; templates
//     parsed deepest path first; partials (_*) parsed, not rendered;
//   - Chart.yaml's kubeVersion checked against --kube-version;
//   - fail/required errors reported as "execution error at (FILE:L:C): msg";
//   - each rendered file split into YAML documents, each parsed (a YAML
//     error names the file), printed as "---\n# Source: FILE\n..." sorted by
//     Helm's install order, hooks last.
//
// What it does not do (see docs/kubernetes.md): subcharts and dependencies,
// values.schema.json validation (the python checks do that), toToml,
// .Files.AsConfig/AsSecrets, hook ordering or weights beyond printing hooks
// last, server-side validation of the objects.
//
// Usage:
//
//	helmrender [-f values.yaml]... [--set a.b=c]... [--set-string a=b]...
//	           [--release-name NAME] [--namespace NS] [--kube-version v1.28.0]
//	           [--api-versions group/version[/Kind]]... [--notes | --values] CHART_DIR
//
// Exit codes: 0 rendered, 1 a template or values error (one line on
// stderr), 2 usage error.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	semver "github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	yaml2 "gopkg.in/yaml.v2"
	yaml3 "gopkg.in/yaml.v3"
)

// ---------------------------------------------------------------------------
// Values: Helm's chartutil.Values is a map[string]interface{} read through
// JSON, so numbers are float64.

type Values = map[string]interface{}

// normalize turns what a YAML decoder produced into what Helm's
// sigs.k8s.io/yaml gives: string keys, float64 numbers, []interface{}.
func normalize(v interface{}) (interface{}, error) {
	v = stringKeys(v)
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out interface{}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func stringKeys(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[fmt.Sprint(k)] = stringKeys(x)
		}
		return m
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[k] = stringKeys(x)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, x := range t {
			l[i] = stringKeys(x)
		}
		return l
	}
	return v
}

func readValuesFile(name string) (Values, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var raw interface{}
	if err := yaml2.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if raw == nil {
		return Values{}, nil
	}
	n, err := normalize(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	m, ok := n.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: top level is not a map", name)
	}
	return m, nil
}

// mergeMaps is Helm's merge of -f files and --set: b wins, maps merge.
func mergeMaps(a, b Values) Values {
	out := make(Values, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce fills user values with the chart's defaults; a user null
// deletes the key (chartutil.CoalesceValues).
func coalesce(user, defaults Values) Values {
	out := make(Values, len(user))
	for k, v := range user {
		out[k] = v
	}
	for k, dv := range defaults {
		uv, present := out[k]
		if !present {
			out[k] = dv
			continue
		}
		if uv == nil {
			delete(out, k)
			continue
		}
		um, uok := uv.(map[string]interface{})
		dm, dok := dv.(map[string]interface{})
		if uok && dok {
			out[k] = coalesce(um, dm)
		} else if dok && !uok {
			fmt.Fprintf(os.Stderr, "helmrender: warning: cannot overwrite table with non table for %s (%v)\n", k, dm)
		}
	}
	return out
}

// typedVal is strvals' typing of a --set value.
func typedVal(s string, forceString bool) interface{} {
	if forceString {
		return s
	}
	switch strings.ToLower(s) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if s == "0" {
		return int64(0)
	}
	if len(s) > 0 && s[0] != '0' {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
	}
	return s
}

var indexRe = regexp.MustCompile(`^([^\[]*)\[(\d+)\]$`)

// splitUnescaped splits s at sep, except where sep is escaped with '\'.
func splitUnescaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && s[i+1] == sep {
			cur.WriteByte(sep)
			i++
			continue
		}
		if s[i] == sep {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(parts, cur.String())
}

// setPath applies one a.b[1].c=value to vals.
func setPath(vals Values, key string, value interface{}) error {
	parts := splitUnescaped(key, '.')
	var cur interface{} = vals
	for i, p := range parts {
		last := i == len(parts)-1
		name, idx := p, -1
		if m := indexRe.FindStringSubmatch(p); m != nil {
			name = m[1]
			idx, _ = strconv.Atoi(m[2])
		}
		if name == "" {
			return fmt.Errorf("--set %s: empty key", key)
		}
		m, ok := cur.(map[string]interface{})
		if !ok {
			return fmt.Errorf("--set %s: %s is not a map", key, name)
		}
		if idx < 0 {
			if last {
				m[name] = value
				return nil
			}
			next, ok := m[name].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				m[name] = next
			}
			cur = next
			continue
		}
		list, _ := m[name].([]interface{})
		for len(list) <= idx {
			list = append(list, nil)
		}
		m[name] = list
		if last {
			list[idx] = value
			return nil
		}
		next, ok := list[idx].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			list[idx] = next
		}
		cur = next
	}
	return nil
}

// parseSet applies "a=b,c.d=e" (and {x,y} lists) like helm --set.
func parseSet(vals Values, expr string, forceString bool) error {
	for _, pair := range splitTopCommas(expr) {
		eq := strings.IndexByte(pair, '=')
		if eq <= 0 {
			return fmt.Errorf("--set %q: key=value expected", pair)
		}
		k, v := pair[:eq], pair[eq+1:]
		var val interface{}
		if strings.HasPrefix(v, "{") && strings.HasSuffix(v, "}") {
			var list []interface{}
			inner := v[1 : len(v)-1]
			if inner != "" {
				for _, it := range splitUnescaped(inner, ',') {
					list = append(list, typedVal(it, forceString))
				}
			}
			if list == nil {
				list = []interface{}{}
			}
			val = list
		} else {
			val = typedVal(v, forceString)
		}
		if err := setPath(vals, k, val); err != nil {
			return err
		}
	}
	return nil
}

// splitTopCommas splits at commas outside {...}, honouring "\,".
func splitTopCommas(s string) []string {
	var parts []string
	var cur strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteString("\\,")
			i++
			continue
		case c == '{':
			depth++
		case c == '}':
			depth--
		case c == ',' && depth == 0:
			parts = append(parts, strings.ReplaceAll(cur.String(), "\\,", ","))
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	last := cur.String()
	if depth == 0 {
		last = strings.ReplaceAll(last, "\\,", ",")
	}
	return append(parts, last)
}

// ---------------------------------------------------------------------------
// The built-in objects.

// Maintainer and Metadata mirror helm's chart.Metadata (Chart.yaml), so
// templates read .Chart.Name, .Chart.AppVersion, ...
type Maintainer struct {
	Name  string `yaml:"name"`
	Email string `yaml:"email"`
	URL   string `yaml:"url"`
}

type Dependency struct {
	Name       string `yaml:"name"`
	Version    string `yaml:"version"`
	Repository string `yaml:"repository"`
}

type Metadata struct {
	Name         string            `yaml:"name"`
	Home         string            `yaml:"home"`
	Sources      []string          `yaml:"sources"`
	Version      string            `yaml:"version"`
	Description  string            `yaml:"description"`
	Keywords     []string          `yaml:"keywords"`
	Maintainers  []*Maintainer     `yaml:"maintainers"`
	Icon         string            `yaml:"icon"`
	APIVersion   string            `yaml:"apiVersion"`
	Condition    string            `yaml:"condition"`
	Tags         string            `yaml:"tags"`
	AppVersion   string            `yaml:"appVersion"`
	Deprecated   bool              `yaml:"deprecated"`
	Annotations  map[string]string `yaml:"annotations"`
	KubeVersion  string            `yaml:"kubeVersion"`
	Dependencies []*Dependency     `yaml:"dependencies"`
	Type         string            `yaml:"type"`
}

// KubeVersion is chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k *KubeVersion) String() string     { return k.Version }
func (k *KubeVersion) GitVersion() string { return k.Version }

// VersionSet is chartutil.VersionSet.
type VersionSet []string

func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type Capabilities struct {
	KubeVersion *KubeVersion
	APIVersions VersionSet
	HelmVersion map[string]string
}

// The API versions a 1.24+ API server serves without CRDs (a subset of
// Helm's DefaultVersionSet: the groups charts ask about).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v1", "autoscaling/v2",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "coordination.k8s.io/v1",
	"discovery.k8s.io/v1", "scheduling.k8s.io/v1", "node.k8s.io/v1",
	"apps/v1/Deployment", "batch/v1/Job", "policy/v1/PodDisruptionBudget",
	"networking.k8s.io/v1/NetworkPolicy", "v1/Service", "v1/ConfigMap", "v1/Secret",
	"v1/ServiceAccount",
}

// Files is chart.Files: the chart's files outside templates/, by path.
type Files map[string][]byte

func (f Files) GetBytes(name string) []byte { return f[name] }
func (f Files) Get(name string) string      { return string(f[name]) }

func (f Files) Lines(name string) []string {
	s := string(f[name])
	if s == "" {
		return []string{}
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Helm's extra functions.

const recursionMax = 1000

var warnRe = regexp.MustCompile(`HELM_ERR_START(.*)HELM_ERR_END`)

func toJSONValue(v interface{}) interface{} { return stringKeys(v) }

// toYAML is helm's toYaml: sigs.k8s.io/yaml.Marshal (JSON, then yaml.v2).
func toYAMLBytes(v interface{}) ([]byte, error) {
	j, err := json.Marshal(toJSONValue(v))
	if err != nil {
		return nil, err
	}
	var obj interface{}
	if err := yaml2.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	return yaml2.Marshal(obj)
}

func toYAML(v interface{}) string {
	b, err := toYAMLBytes(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func mustToYAML(v interface{}) (string, error) {
	b, err := toYAMLBytes(v)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

func toYAMLPretty(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml3.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(toJSONValue(v)); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// yamlToJSONish decodes YAML the way sigs.k8s.io/yaml.Unmarshal does.
func yamlDecode(s string) (interface{}, error) {
	var raw interface{}
	if err := yaml2.Unmarshal([]byte(s), &raw); err != nil {
		return nil, err
	}
	return normalize(raw)
}

func fromYAML(s string) map[string]interface{} {
	v, err := yamlDecode(s)
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		if v == nil {
			return map[string]interface{}{}
		}
		return map[string]interface{}{"Error": "error unmarshaling JSON: not an object"}
	}
	return m
}

func fromYAMLArray(s string) []interface{} {
	v, err := yamlDecode(s)
	if err != nil {
		return []interface{}{err.Error()}
	}
	l, ok := v.([]interface{})
	if !ok {
		return []interface{}{"error unmarshaling JSON: not an array"}
	}
	return l
}

func toJSON(v interface{}) string {
	b, err := json.Marshal(toJSONValue(v))
	if err != nil {
		return ""
	}
	return string(b)
}

func mustToJSON(v interface{}) (string, error) {
	b, err := json.Marshal(toJSONValue(v))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	var l []interface{}
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return []interface{}{err.Error()}
	}
	return l
}

// funcMap builds the function map bound to template set t.
func funcMap(t **template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	included := map[string]int{}
	f["toYaml"] = toYAML
	f["mustToYaml"] = mustToYAML
	f["toYamlPretty"] = toYAMLPretty
	f["fromYaml"] = fromYAML
	f["fromYamlArray"] = fromYAMLArray
	f["toJson"] = toJSON
	f["mustToJson"] = mustToJSON
	f["fromJson"] = fromJSON
	f["fromJsonArray"] = fromJSONArray
	f["toToml"] = func(interface{}) (string, error) {
		return "", errors.New("toToml is not supported by helmrender")
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, fmt.Errorf("HELM_ERR_START%sHELM_ERR_END", warn)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, fmt.Errorf("HELM_ERR_START%sHELM_ERR_END", warn)
		}
		return val, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		if included[name] > recursionMax {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		defer func() { included[name]-- }()
		var buf strings.Builder
		err := (*t).ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, vals interface{}) (string, error) {
		clone, err := (*t).Clone()
		if err != nil {
			return "", err
		}
		clone.Option("missingkey=zero")
		name := "tpl"
		if m, ok := vals.(map[string]interface{}); ok {
			if tm, ok := m["Template"].(map[string]interface{}); ok {
				if n, ok := tm["Name"].(string); ok {
					name = n + "#tpl"
				}
			}
		}
		nt, err := clone.New(name).Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %v", text, err)
		}
		var buf strings.Builder
		if err := nt.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	return f
}

// cleanupExecError gives Helm's "execution error at (FILE:L:C): msg".
func cleanupExecError(filename string, err error) error {
	var ee template.ExecError
	if !errors.As(err, &ee) {
		return err
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error at (%s): %s", filename, err)
	}
	location := tokens[1]
	if m := warnRe.FindStringSubmatch(tokens[2]); len(m) >= 2 {
		return fmt.Errorf("execution error at (%s): %s", location, m[1])
	}
	msg := tokens[2]
	if i := strings.LastIndex(msg, "error calling fail: "); i >= 0 {
		msg = msg[i+len("error calling fail: "):]
	}
	return fmt.Errorf("execution error at (%s): %s", location, msg)
}

// ---------------------------------------------------------------------------
// Chart loading.

type chart struct {
	dir       string
	meta      *Metadata
	defaults  Values
	templates map[string]string // "NAME/templates/x.yaml" -> text
	files     Files
}

// ignoreMatch is a small .helmignore: one glob per line, against the path
// and the base name; a trailing "/" means a directory.
func ignoreMatch(patterns []string, rel string, isDir bool) bool {
	for _, p := range patterns {
		dirOnly := strings.HasSuffix(p, "/")
		p = strings.TrimSuffix(p, "/")
		if dirOnly && !isDir {
			continue
		}
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
		if ok, _ := path.Match(p, path.Base(rel)); ok {
			return true
		}
	}
	return false
}

func loadChart(dir string) (*chart, error) {
	c := &chart{dir: dir, templates: map[string]string{}, files: Files{}}
	data, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	c.meta = &Metadata{}
	if err := yaml2.UnmarshalStrict(data, c.meta); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %v", err)
	}
	if c.meta.APIVersion != "v2" {
		return nil, fmt.Errorf("Chart.yaml: apiVersion %q: only v2 charts are supported", c.meta.APIVersion)
	}
	if c.meta.Name == "" || c.meta.Version == "" {
		return nil, errors.New("Chart.yaml: name and version are required")
	}
	if _, err := semver.StrictNewVersion(c.meta.Version); err != nil {
		return nil, fmt.Errorf("Chart.yaml: version %q is not SemVer 2: %v", c.meta.Version, err)
	}
	if len(c.meta.Dependencies) > 0 {
		return nil, errors.New("Chart.yaml: dependencies (subcharts) are not supported by helmrender")
	}
	c.defaults = Values{}
	if _, err := os.Stat(filepath.Join(dir, "values.yaml")); err == nil {
		if c.defaults, err = readValuesFile(filepath.Join(dir, "values.yaml")); err != nil {
			return nil, err
		}
	}
	var ignore []string
	if b, err := os.ReadFile(filepath.Join(dir, ".helmignore")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if l != "" && !strings.HasPrefix(l, "#") {
				ignore = append(ignore, l)
			}
		}
	}
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignoreMatch(ignore, rel, info.IsDir()) {
			if info.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if info.IsDir() {
			if rel == "charts" {
				entries, _ := os.ReadDir(p)
				if len(entries) > 0 {
					return errors.New("charts/: subcharts are not supported by helmrender")
				}
			}
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			c.templates[c.meta.Name+"/"+rel] = string(b)
		case rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json" ||
			rel == ".helmignore" || rel == "requirements.yaml" || rel == "Chart.lock":
		default:
			c.files[rel] = b
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// sortTemplates: deepest paths first, then reverse alphabetical (Helm's
// sort.Reverse(byPathLen)); later definitions of a name win.
func sortTemplates(names []string) {
	sort.Slice(names, func(i, j int) bool {
		a, b := names[i], names[j]
		ca, cb := strings.Count(a, "/"), strings.Count(b, "/")
		if ca != cb {
			return ca > cb
		}
		return a > b
	})
}

func render(c *chart, top map[string]interface{}) (map[string]string, error) {
	var t *template.Template
	t = template.New("gotpl")
	t.Option("missingkey=zero")
	t.Funcs(funcMap(&t))
	names := make([]string, 0, len(c.templates))
	for n := range c.templates {
		names = append(names, n)
	}
	sortTemplates(names)
	for _, n := range names {
		if _, err := t.New(n).Parse(c.templates[n]); err != nil {
			return nil, fmt.Errorf("parse error at (%s): %v", n, strings.TrimPrefix(err.Error(), "template: "))
		}
	}
	out := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue
		}
		top["Template"] = map[string]interface{}{"Name": n, "BasePath": c.meta.Name + "/templates"}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, n, top); err != nil {
			return nil, cleanupExecError(n, err)
		}
		out[n] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Manifests: releaseutil.SplitManifests + SortManifests.

var sepRe = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

type manifest struct {
	source  string
	content string
	kind    string
	hook    bool
	seq     int
}

type head struct {
	Kind     string `yaml:"kind"`
	Metadata *struct {
		Name        string            `yaml:"name"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
}

func kindRank(kind string) int {
	for i, k := range installOrder {
		if k == kind {
			return i
		}
	}
	return len(installOrder)
}

func splitManifests(rendered map[string]string) ([]manifest, error) {
	var all []manifest
	files := make([]string, 0, len(rendered))
	for n := range rendered {
		files = append(files, n)
	}
	sort.Strings(files)
	seq := 0
	for _, n := range files {
		if strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		ext := path.Ext(n)
		if ext != ".yaml" && ext != ".yml" && ext != ".json" {
			continue
		}
		for _, doc := range sepRe.Split(rendered[n], -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var h head
			if err := yaml2.Unmarshal([]byte(doc), &h); err != nil {
				return nil, fmt.Errorf("YAML parse error on %s: %v", n, err)
			}
			m := manifest{source: n, content: doc, kind: h.Kind, seq: seq}
			seq++
			if h.Metadata != nil {
				if _, ok := h.Metadata.Annotations["helm.sh/hook"]; ok {
					m.hook = true
				}
			}
			all = append(all, m)
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.hook != b.hook {
			return !a.hook
		}
		ra, rb := kindRank(a.kind), kindRank(b.kind)
		if ra != rb {
			return ra < rb
		}
		return a.seq < b.seq
	})
	return all, nil
}

// ---------------------------------------------------------------------------

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func parseKubeVersion(s string) (*KubeVersion, error) {
	v, err := semver.NewVersion(s)
	if err != nil {
		return nil, fmt.Errorf("--kube-version %q: %v", s, err)
	}
	return &KubeVersion{
		Version: "v" + v.String(),
		Major:   strconv.FormatUint(v.Major(), 10),
		Minor:   strconv.FormatUint(v.Minor(), 10),
	}, nil
}

func run() (int, error) {
	fs := flag.NewFlagSet("helmrender", flag.ContinueOnError)
	var valueFiles, sets, setStrings, apiVersions multi
	fs.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	fs.Var(&valueFiles, "values", "same as -f")
	fs.Var(&sets, "set", "a.b=value (repeatable)")
	fs.Var(&setStrings, "set-string", "a.b=value, always a string (repeatable)")
	fs.Var(&apiVersions, "api-versions", "extra API version for .Capabilities.APIVersions (repeatable)")
	releaseName := fs.String("release-name", "release-name", "release name")
	namespace := fs.String("namespace", "default", "release namespace")
	kubeVersion := fs.String("kube-version", "v1.28.0", "Kubernetes version for .Capabilities and kubeVersion checks")
	isUpgrade := fs.Bool("is-upgrade", false, ".Release.IsUpgrade (else IsInstall)")
	notes := fs.Bool("notes", false, "print the rendered NOTES.txt instead of the manifests")
	printValues := fs.Bool("values-json", false, "print the merged values as JSON and exit")
	// Go's flag stops at the first positional argument: let flags follow the chart.
	args := os.Args[1:]
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return 2, nil
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	if len(positional) != 1 {
		fmt.Fprintln(os.Stderr, "usage: helmrender [flags] CHART_DIR")
		return 2, nil
	}
	c, err := loadChart(positional[0])
	if err != nil {
		return 1, err
	}
	user := Values{}
	for _, vf := range valueFiles {
		v, err := readValuesFile(vf)
		if err != nil {
			return 1, err
		}
		user = mergeMaps(user, v)
	}
	setVals := Values{}
	for _, s := range sets {
		if err := parseSet(setVals, s, false); err != nil {
			return 1, err
		}
	}
	for _, s := range setStrings {
		if err := parseSet(setVals, s, true); err != nil {
			return 1, err
		}
	}
	user = mergeMaps(user, setVals)
	vals := coalesce(user, c.defaults)
	if *printValues {
		b, err := json.MarshalIndent(vals, "", "  ")
		if err != nil {
			return 1, err
		}
		fmt.Println(string(b))
		return 0, nil
	}

	kv, err := parseKubeVersion(*kubeVersion)
	if err != nil {
		return 2, err
	}
	if c.meta.KubeVersion != "" {
		constraint, err := semver.NewConstraint(c.meta.KubeVersion)
		if err != nil {
			return 1, fmt.Errorf("Chart.yaml: kubeVersion %q: %v", c.meta.KubeVersion, err)
		}
		v, _ := semver.NewVersion(kv.Version)
		if !constraint.Check(v) {
			return 1, fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s",
				c.meta.KubeVersion, kv.Version)
		}
	}
	caps := &Capabilities{
		KubeVersion: kv,
		APIVersions: append(VersionSet(append([]string{}, defaultAPIVersions...)), apiVersions...),
		HelmVersion: map[string]string{"version": "v3.14.0", "go_version": "go1.19"},
	}
	top := map[string]interface{}{
		"Values":       vals,
		"Chart":        c.meta,
		"Capabilities": caps,
		"Files":        c.files,
		"Subcharts":    map[string]interface{}{},
		"Release": map[string]interface{}{
			"Name":      *releaseName,
			"Namespace": *namespace,
			"Revision":  1,
			"Service":   "Helm",
			"IsUpgrade": *isUpgrade,
			"IsInstall": !*isUpgrade,
		},
	}
	rendered, err := render(c, top)
	if err != nil {
		return 1, err
	}
	if *notes {
		fmt.Print(rendered[c.meta.Name+"/templates/NOTES.txt"])
		return 0, nil
	}
	ms, err := splitManifests(rendered)
	if err != nil {
		return 1, err
	}
	var out strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	fmt.Print(out.String())
	return 0, nil
}

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
