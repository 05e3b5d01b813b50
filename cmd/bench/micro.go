package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// MicroResult holds the Go micro-benchmarks, medians over -count runs.
type MicroResult struct {
	Command string
	Benches []MicroBench
}

// MicroBench is one benchmark: the median of each unit over the runs.
type MicroBench struct {
	Pkg, Name string
	Runs      int
	Values    map[string]float64 // unit → median
}

var microPackages = []string{"./decode", "./pgjson", "./publish"}

func (e *env) micro(ctx context.Context) (*MicroResult, error) {
	goCmd, err := goTool()
	if err != nil {
		return nil, err
	}
	// NetworkDelivery is scenario 2b's Go-benchmark form: slow by design
	// (it includes a window of 1 across 10 ms) and measured there.
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-skip", "NetworkDelivery", "-benchmem", "-count", strconv.Itoa(e.opts.MicroCount)}, microPackages...)
	res := &MicroResult{Command: "go " + strings.Join(args, " ")}
	e.logf("%s", res.Command)
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = e.opts.ModuleDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v\n%s%s", res.Command, err, out, stderr.String())
	}
	res.Benches = parseBenchOutput(string(out))
	return res, nil
}

// parseBenchOutput reads `go test -bench` output and returns each
// benchmark with the median of every unit, in order of first appearance.
func parseBenchOutput(out string) []MicroBench {
	type acc struct {
		pkg, name string
		runs      int
		values    map[string][]float64
	}
	var order []*acc
	byKey := map[string]*acc{}
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i]
		}
		key := pkg + " " + name
		a := byKey[key]
		if a == nil {
			a = &acc{pkg: pkg, name: name, values: map[string][]float64{}}
			byKey[key] = a
			order = append(order, a)
		}
		a.runs++
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			a.values[f[i+1]] = append(a.values[f[i+1]], v)
		}
	}
	var res []MicroBench
	for _, a := range order {
		b := MicroBench{Pkg: a.pkg, Name: a.name, Runs: a.runs, Values: map[string]float64{}}
		for unit, vs := range a.values {
			b.Values[unit] = median(vs)
		}
		res = append(res, b)
	}
	return res
}
