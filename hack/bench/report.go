package main

import (
	"fmt"
	"slices"
	"strings"
)

// figure is one measured quantity, with a value per round for each server.
type figure struct {
	name, unit    string
	lowerIsBetter bool
	values        map[kind][]float64
	// target, when set, is a ratio registryd/distribution to meet
	// (at least, or at most when lowerIsBetter), with its wording.
	targetRatio float64
	// absolute, when set, is a check on registryd's median alone.
	absolute func(median float64) (string, bool)
}

// table is a titled list of figures.
type table struct {
	title   string
	figures []*figure
	limits  []limitRow
}

type limitRow struct {
	name, unit string
	value      float64
}

func (t *table) limit(name, unit string, v float64) {
	t.limits = append(t.limits, limitRow{name, unit, v})
}

func (t *table) add(f *figure) *figure {
	if f.values == nil {
		f.values = map[kind][]float64{}
	}
	t.figures = append(t.figures, f)
	return f
}

func (f *figure) record(k kind, v float64) { f.values[k] = append(f.values[k], v) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func num(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// cell is "median [min–max]" over the rounds.
func cell(v []float64) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%s [%s–%s]", num(median(v)), num(slices.Min(v)), num(slices.Max(v)))
}

// verdict says whether f meets its target, "" when it has none.
func (f *figure) verdict() (target, met string) {
	rd, dist := median(f.values[registryd]), median(f.values[distribution])
	var parts, oks []string
	if f.targetRatio > 0 && dist > 0 {
		ratio := rd / dist
		if f.lowerIsBetter {
			parts = append(parts, fmt.Sprintf("≤ %.2g×", f.targetRatio))
			oks = append(oks, yesNo(ratio <= f.targetRatio))
		} else {
			parts = append(parts, fmt.Sprintf("≥ %.2g×", f.targetRatio))
			oks = append(oks, yesNo(ratio >= f.targetRatio))
		}
	}
	if f.absolute != nil {
		text, ok := f.absolute(rd)
		parts = append(parts, text)
		oks = append(oks, yesNo(ok))
	}
	return strings.Join(parts, "; "), strings.Join(oks, "; ")
}

func yesNo(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// markdown renders the table.
func (t *table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.title)
	if len(t.limits) > 0 {
		b.WriteString("| Limit | Value |\n|---|---:|\n")
		for _, l := range t.limits {
			fmt.Fprintf(&b, "| %s | %s %s |\n", l.name, num(l.value), l.unit)
		}
		b.WriteString("\n")
	}
	if len(t.figures) > 0 {
		b.WriteString("| Figure | registryd median [min–max] | distribution median [min–max] | registryd / distribution | Target | |\n")
		b.WriteString("|---|---:|---:|---:|---|---|\n")
		for _, f := range t.figures {
			ratio := "—"
			if d := median(f.values[distribution]); d > 0 && len(f.values[registryd]) > 0 {
				ratio = fmt.Sprintf("%.2f×", median(f.values[registryd])/d)
			}
			target, met := f.verdict()
			fmt.Fprintf(&b, "| %s (%s) | %s | %s | %s | %s | %s |\n", f.name, f.unit,
				cell(f.values[registryd]), cell(f.values[distribution]), ratio, target, met)
		}
		b.WriteString("\n")
	}
	return b.String()
}
