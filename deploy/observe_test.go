package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/objwatch/callback/internal/metrics"
)

// TestPromtool runs the real tool over the rules and their unit tests. promtool is a
// tool of the tools module (tools/go.mod), built and run by the go command, so there is
// nothing to install and nothing to find on PATH: go test puts the go that runs it
// first there. make test builds promtool before go test; a first build here takes
// minutes.
func TestPromtool(t *testing.T) {
	t.Parallel()
	modfile, err := filepath.Abs(filepath.Join("..", "tools", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "rules.yml"}, {"test", "rules", "rules_test.yml"}} {
		cmd := exec.Command("go", append([]string{"tool", "-modfile=" + modfile, "promtool"}, args...)...)
		cmd.Dir = "prometheus"
		// Without cgo, as the Makefile builds it: the same cached binary.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// scrapeOnly are series that Prometheus makes itself for every target.
var scrapeOnly = map[string]bool{"up": true}

// exported lists every series name the service exports, histogram parts included.
// Every vector is exported at 0 for its known labels from the start, so Gather sees it.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	families, err := metrics.New().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+suffix] = true
			}
		}
	}
	return names
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatal(err)
	}
	return rf
}

// selected parses expr with Prometheus's own PromQL parser and returns the metric
// names it selects.
func selected(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.ParseExpr(expr)
	if err != nil {
		t.Errorf("PromQL does not parse: %v\n%s", err, expr)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// checkNames fails for every name that neither the service nor a recording rule
// exports: renaming a metric breaks this test instead of an alert or a panel.
func checkNames(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	names := selected(t, expr)
	if len(names) == 0 {
		t.Errorf("%s: selects no metric: %s", where, expr)
	}
	for _, n := range names {
		if n == "" {
			t.Errorf("%s: a selector without a metric name: %s", where, expr)
		} else if !known[n] {
			t.Errorf("%s: %q is not exported by the service nor recorded by a rule: %s", where, n, expr)
		}
	}
}

func known(t *testing.T) map[string]bool {
	t.Helper()
	k := exported(t)
	for n := range scrapeOnly {
		k[n] = true
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				k[r.Record] = true
			}
		}
	}
	return k
}

func TestRulesNameExportedMetrics(t *testing.T) {
	t.Parallel()
	k := known(t)
	rf := readRules(t)
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			checkNames(t, g.Name+"/"+r.Record+r.Alert, r.Expr, k)
			if r.Alert != "" {
				alerts++
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts read from rules.yml")
	}
}

func TestRulesTestEveryAlert(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("prometheus", "rules_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if !fires[r.Alert] {
				t.Errorf("alert %s has no test in which it fires", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("alert %s has no test in which it stays quiet", r.Alert)
			}
		}
	}
}

// TestAlertsLinkTheirRunbook: every alert's runbook_url names a section of
// docs/operations.md that exists, so that whoever the alert wakes lands on what to do.
func TestAlertsLinkTheirRunbook(t *testing.T) {
	t.Parallel()
	const runbook = "docs/operations.md"
	doc, err := os.ReadFile(filepath.Join("..", runbook))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#{1,6} +(.+)$`).FindAllStringSubmatch(string(doc), -1) {
		sections[anchor(m[1])] = true
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			url := r.Annotations["runbook_url"]
			file, section, _ := strings.Cut(url, "#")
			if file != runbook || !sections[section] {
				t.Errorf("alert %s: runbook_url %q is not a section of %s", r.Alert, url, runbook)
			}
			if r.Annotations["runbook"] == "" {
				t.Errorf("alert %s has no one-line runbook", r.Alert)
			}
		}
	}
}

// anchor is the fragment GitHub gives a Markdown heading: lower case, punctuation
// dropped, spaces turned into hyphens.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

type dashboard struct {
	UID    string `json:"uid"`
	Panels []struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// grafanaVariables are replaced by a duration before parsing, as Grafana does.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "30m")

func TestDashboardQueriesParseAndNameExportedMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("grafana", "callback.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	source := datasourceUID(t)
	k := known(t)
	used := map[string]bool{}
	queries := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource.UID != source {
			t.Errorf("panel %q uses datasource %q, provisioned is %q", p.Title, p.Datasource.UID, source)
		}
		for _, q := range p.Targets {
			queries++
			expr := grafanaVariables.Replace(q.Expr)
			checkNames(t, "panel "+p.Title, expr, k)
			for _, n := range selected(t, expr) {
				used[n] = true
			}
		}
	}
	if queries == 0 {
		t.Fatal("no queries read from the dashboard")
	}
	// What the dashboard must show, by the series that show it.
	for _, n := range []string{"callback:callbacks_accepted:rate1m", "callback_callbacks_rejected_total", "callback_reply_seconds_bucket",
		"callback_commit_batch_callbacks_bucket", "callback_commit_seconds_bucket", "callback_callbacks_spooled_total",
		"callback_inbox_oldest_seconds", "callback_merged_ids_total", "callback_lookup_limit", "callback_lookups_in_flight",
		"callback:lookups:rate1m", "callback_lookup_seconds_bucket", "callback_objects_online", "callback_objects_rows_expired_total",
		"callback:lookup_capacity:per_second", "callback:lookup_demand:per_second"} {
		if !used[n] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}

func datasourceUID(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("grafana", "provisioning", "datasources", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Datasources []struct {
			UID string `yaml:"uid"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(data, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("datasource provisioning: %v %+v", err, ds)
	}
	return ds.Datasources[0].UID
}

// TestExportedAtStart: every series exists from the start (at 0 for known labels), so
// that rate() in an alert works from the first error on.
func TestExportedAtStart(t *testing.T) {
	t.Parallel()
	k := exported(t)
	var missing []string
	for _, n := range []string{"callback_database_errors_total", "callback_panics_recovered_total", "callback_work_dropped_total",
		"callback_lookups_total", "callback_callbacks_rejected_total", "callback_build_info", "callback_database_up"} {
		if !k[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("not exported until first used: %v", missing)
	}
}
