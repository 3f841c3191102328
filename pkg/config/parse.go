package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Parse decodes a YAML document into a Config: ${VAR} and ${VAR:-default}
// are expanded in scalar values, unknown keys and ill-typed values are
// reported with their key paths, then defaults are applied and the result
// validated. Every problem found is returned at once as Problems.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config is not valid YAML: %w", err)
	}
	c := &Config{}
	d := &decoder{}
	if len(root.Content) > 0 {
		d.decode(root.Content[0], reflect.ValueOf(c).Elem(), "")
	}
	c.Defaults()
	ps := d.problems
	if err := c.Validate(); err != nil {
		// A key that failed to decode is reported once, by the decoder.
		seen := map[string]bool{}
		for _, p := range ps {
			seen[p.Path] = true
		}
		for _, p := range err.(Problems) {
			if !seen[p.Path] {
				ps = append(ps, p)
			}
		}
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return c, nil
}

type decoder struct{ problems Problems }

func (d *decoder) add(path, format string, args ...any) {
	if path == "" {
		path = "(top level)"
	}
	d.problems = append(d.problems, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
	envRe        = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)
)

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// expand replaces ${VAR} and ${VAR:-default} in a scalar.
func (d *decoder) expand(n *yaml.Node, path string) {
	if n.Kind != yaml.ScalarNode || !strings.Contains(n.Value, "${") {
		return
	}
	n.Value = envRe.ReplaceAllStringFunc(n.Value, func(m string) string {
		sub := envRe.FindStringSubmatch(m)
		if v, ok := os.LookupEnv(sub[1]); ok {
			return v
		}
		if sub[2] != "" {
			return sub[3]
		}
		d.add(path, "environment variable %s is not set (use ${%s:-default} for a default)", sub[1], sub[1])
		return ""
	})
	if n.Style == 0 || n.Style == yaml.TaggedStyle {
		n.Tag = "" // let the expanded text resolve to its own type
	}
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.expand(n, path)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty key keeps its default
	}
	switch {
	case v.Type() == durationType:
		dur, err := time.ParseDuration(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.add(path, "%q is not a duration (e.g. 10s, 500ms)", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	case v.Type() == byteSizeType:
		size, err := ParseByteSize(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.add(path, "%q is not a size (e.g. 64MiB)", n.Value)
			return
		}
		v.SetInt(int64(size))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.add(path, "must be a mapping of keys")
			return
		}
		fields := map[string][]int{}
		yamlFields(v.Type(), nil, fields)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			idx, ok := fields[key]
			if !ok {
				d.add(join(path, key), "unknown key%s", suggest(key, fields))
				continue
			}
			d.decode(n.Content[i+1], v.FieldByIndex(idx), join(path, key))
		}
	case reflect.Pointer:
		nv := reflect.New(v.Type().Elem())
		before := len(d.problems)
		d.decode(n, nv.Elem(), path)
		if len(d.problems) == before {
			v.Set(nv)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(path, "must be a list")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.add(path, "must be a mapping")
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			val := reflect.New(v.Type().Elem()).Elem()
			d.decode(n.Content[i+1], val, join(path, key))
			m.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), val)
		}
		v.Set(m)
	default:
		if n.Kind != yaml.ScalarNode {
			d.add(path, "must be a single value, not a %s", kindName(n.Kind))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.add(path, "%q is not a valid %s", n.Value, v.Kind())
		}
	}
}

// yamlFields maps the YAML keys of struct t to their field indexes,
// following `yaml:",inline"` structs.
func yamlFields(t reflect.Type, prefix []int, out map[string][]int) {
	for i := 0; i < t.NumField(); i++ {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		idx := append(append([]int(nil), prefix...), i)
		switch {
		case opts == "inline" && t.Field(i).Type.Kind() == reflect.Struct:
			yamlFields(t.Field(i).Type, idx, out)
		case name != "":
			out[name] = idx
		}
	}
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

// suggest names the known key closest to key, if one is close.
func suggest(key string, fields map[string][]int) string {
	best, bestD := "", 3
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		if dd := levenshtein(key, f); dd < bestD {
			best, bestD = f, dd
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return fmt.Sprintf(" (known keys: %s)", strings.Join(names, ", "))
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
