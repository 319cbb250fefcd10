//! A sweep's `summary.md` and `summary.svg`: per configuration, the mean ± standard error over
//! seeds; per configuration, the paired difference from the baseline over the seeds both ran.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::RunResult;
use super::plan::SweepPlan;
use crate::metrics::read_metrics;
use crate::plot::per_step_chart;

/// Mean and standard error (sample standard deviation / √n) of a few numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanSe {
    /// How many.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Standard error of the mean; `None` for a single value.
    pub se: Option<f64>,
}

impl MeanSe {
    /// `None` for no values.
    pub fn of(xs: &[f64]) -> Option<Self> {
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let se = (n > 1).then(|| {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        });
        Some(Self { n, mean, se })
    }

    fn show(&self, scale: f64, digits: usize) -> String {
        match self.se {
            Some(se) => format!("{:.digits$} ± {:.digits$}", self.mean * scale, se * scale),
            None => format!("{:.digits$}", self.mean * scale),
        }
    }
}

/// A number a summary reports for each run.
struct Measure {
    /// Its column heading.
    name: &'static str,
    /// Its value for a run, if the run has it.
    get: fn(&RunResult) -> Option<f64>,
    /// Shown multiplied by this (100 for percentages).
    scale: f64,
    /// Decimals shown.
    digits: usize,
}

const MEASURES: [Measure; 5] = [
    Measure {
        name: "eval loss",
        get: |r| r.eval_metric("loss"),
        scale: 1.0,
        digits: 4,
    },
    Measure {
        name: "accuracy %",
        get: |r| r.eval_metric("accuracy"),
        scale: 100.0,
        digits: 1,
    },
    Measure {
        name: "train loss (last 10%)",
        get: |r| Some(r.train_loss_tail),
        scale: 1.0,
        digits: 4,
    },
    Measure {
        name: "kept %",
        get: |r| Some(r.mean_kept_fraction),
        scale: 100.0,
        digits: 1,
    },
    Measure {
        name: "s/step",
        get: |r| Some(r.timing.median_step_secs),
        scale: 1.0,
        digits: 3,
    },
];

/// The measures some run has.
fn present(results: &[RunResult]) -> Vec<&'static Measure> {
    MEASURES
        .iter()
        .filter(|m| results.iter().any(|r| (m.get)(r).is_some()))
        .collect()
}

/// Per configuration: mean ± SE of each measure over its seeds.
pub fn table(plan: &SweepPlan, results: &[RunResult]) -> String {
    let measures = present(results);
    let mut out = String::from("| configuration | seeds |");
    for m in &measures {
        let _ = write!(out, " {} |", m.name);
    }
    out.push_str(" time vs baseline |\n| --- | --- |");
    out.push_str(&" --- |".repeat(measures.len() + 1));
    let step_secs = |name: &str| {
        let xs: Vec<f64> = results
            .iter()
            .filter(|r| r.config == name)
            .map(|r| r.timing.median_step_secs)
            .collect();
        MeanSe::of(&xs).map(|s| s.mean)
    };
    for (i, config) in plan.configs.iter().enumerate() {
        let base_secs = step_secs(&plan.configs[plan.baselines[i]].name);
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.config == config.name).collect();
        let mark = if plan.is_baseline(i) {
            " (baseline)"
        } else {
            ""
        };
        let _ = write!(out, "\n| `{}`{mark} | {} |", config.name, runs.len());
        for m in &measures {
            let xs: Vec<f64> = runs.iter().filter_map(|r| (m.get)(r)).collect();
            let cell = MeanSe::of(&xs).map_or("—".to_string(), |s| s.show(m.scale, m.digits));
            let _ = write!(out, " {cell} |");
        }
        let ratio = match (step_secs(&config.name), base_secs) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".to_string(),
        };
        let _ = write!(out, " {ratio} |");
    }
    out
}

/// Per configuration: the mean ± SE of its difference from the baseline, seed by seed.
fn paired_table(plan: &SweepPlan, results: &[RunResult]) -> String {
    let by_seed = |name: &str| -> BTreeMap<u64, &RunResult> {
        results
            .iter()
            .filter(|r| r.config == name)
            .map(|r| (r.seed, r))
            .collect()
    };
    let measures = present(results);
    let mut out = String::from("| configuration | baseline | pairs |");
    for m in &measures {
        let _ = write!(out, " Δ {} |", m.name);
    }
    out.push_str("\n| --- | --- | --- |");
    out.push_str(&" --- |".repeat(measures.len()));
    for (i, config) in plan.configs.iter().enumerate() {
        if plan.is_baseline(i) {
            continue;
        }
        let base = &plan.configs[plan.baselines[i]].name;
        let baseline = by_seed(base);
        let pairs: Vec<(&RunResult, &RunResult)> = by_seed(&config.name)
            .into_iter()
            .filter_map(|(seed, r)| baseline.get(&seed).map(|b| (r, *b)))
            .collect();
        let _ = write!(out, "\n| `{}` | `{base}` | {} |", config.name, pairs.len());
        for m in &measures {
            let diffs: Vec<f64> = pairs
                .iter()
                .filter_map(|(r, b)| Some((m.get)(r)? - (m.get)(b)?))
                .collect();
            let cell = MeanSe::of(&diffs).map_or("—".to_string(), |s| {
                let sign = if s.mean >= 0.0 { "+" } else { "" };
                format!("{sign}{}", s.show(m.scale, m.digits))
            });
            let _ = write!(out, " {cell} |");
        }
    }
    out
}

/// Which machine timed which runs, when they were not all timed on one.
fn machines(results: &[RunResult]) -> String {
    let mut by_machine: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in results {
        let machine = r.timing.machine.as_deref().unwrap_or("not recorded");
        by_machine
            .entry(machine)
            .or_default()
            .push(format!("`{}` seed {}", r.config, r.seed));
    }
    if by_machine.len() < 2 {
        return String::new();
    }
    let mut out = String::from(
        "\n\n## Machines\n\nThese runs were timed on more than one machine: compare `s/step` \
         only between runs of one machine.\n",
    );
    for (machine, runs) in by_machine {
        let _ = write!(out, "\n- {machine}: {}", runs.join(", "));
    }
    out
}

/// `summary.md`.
pub fn markdown(plan: &SweepPlan, results: &[RunResult]) -> String {
    let mut out = format!(
        "# Sweep summary\n\n{} of {} runs finished, over {} configurations. Mean ± \
         standard error over seeds (no ± with one seed). `s/step` is the median wall-clock \
         time of an optimizer step; `kept %` the mean fraction of gradient entries the mask \
         kept; `time vs baseline` the ratio of mean `s/step` (compare only runs timed on one \
         otherwise idle machine).\n\n",
        results.len(),
        plan.runs.len(),
        plan.configs.len(),
    );
    out.push_str(&table(plan, results));
    let _ = write!(
        out,
        "\n\n## Paired differences from the baseline\n\nEach configuration minus its \
         baseline, seed by seed, over the seeds both finished: mean ± standard error of the \
         differences. A difference within about two standard errors of zero is not evidence \
         of an effect.\n\n"
    );
    out.push_str(&paired_table(plan, results));
    out.push_str(&machines(results));
    out.push_str("\n\n## Configurations\n\n");
    for config in &plan.configs {
        let changes: Vec<String> = config
            .changes
            .iter()
            .map(|(k, v)| format!("`{k} = {v}`"))
            .collect();
        let changes = if changes.is_empty() {
            "the base settings".to_string()
        } else {
            changes.join(", ")
        };
        let _ = writeln!(out, "- `{}`: {changes}", config.name);
    }
    out.push_str("\nPlots: `summary.svg` (loss per step, mean over seeds; the headline measure against the mask ratio).\n");
    out
}

/// `summary.svg`: left, each configuration's loss per step (evaluation loss where the runs
/// evaluated during training, training loss otherwise), mean over seeds; right, the headline
/// measure (accuracy, else final eval loss, else training loss) against the mask ratio, ± SE.
pub fn plot(plan: &SweepPlan, results: &[RunResult], path: &Path) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let curves = loss_curves(plan, results)?;
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(640);

    let points = curves.iter().flat_map(|(_, c)| c.iter());
    let (steps, lo, hi) = points.fold((1u64, f64::INFINITY, f64::NEG_INFINITY), |a, &(s, y)| {
        (a.0.max(s), a.1.min(y), a.2.max(y))
    });
    let (lo, hi) = padded(lo, hi);
    let mut chart = per_step_chart(&left, "loss per step (mean over seeds)", steps, lo..hi)
        .map_err(|e| err(&e))?;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    // The headline: accuracy, else eval loss, else training loss (MEASURES' first three).
    let present = present(results);
    let headline = ["accuracy %", "eval loss"]
        .iter()
        .find_map(|name| present.iter().find(|m| m.name == *name))
        .copied()
        .unwrap_or(&MEASURES[2]);
    let (label, get, scale) = (headline.name, headline.get, headline.scale);
    let mut marks = Vec::new();
    for (i, config) in plan.configs.iter().enumerate() {
        let xs: Vec<f64> = results
            .iter()
            .filter(|r| r.config == config.name)
            .filter_map(|r| get(r).map(|y| y * scale))
            .collect();
        let ratio = plan
            .runs
            .iter()
            .find(|r| r.config == i)
            .map_or(0.0, |r| r.settings.gmt.mask_ratio);
        if let Some(s) = MeanSe::of(&xs) {
            marks.push((i, config.name.clone(), ratio, s));
        }
    }
    let lo = marks.iter().map(|m| m.3.mean - m.3.se.unwrap_or(0.0));
    let hi = marks.iter().map(|m| m.3.mean + m.3.se.unwrap_or(0.0));
    let (lo, hi) = padded(
        lo.fold(f64::INFINITY, f64::min),
        hi.fold(f64::NEG_INFINITY, f64::max),
    );
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("{label} by mask ratio (± SE)"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.05f64..1.0, lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("gmt.mask_ratio")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, name, ratio, s) in &marks {
        let color = Palette99::pick(*i).to_rgba();
        // Configurations at one ratio (e.g. magnitude and random) are spread a little apart.
        let x = ratio + 0.012 * (*i as f64 - plan.configs.len() as f64 / 2.0);
        let se = s.se.unwrap_or(0.0);
        chart
            .draw_series([ErrorBar::new_vertical(
                x,
                s.mean - se,
                s.mean,
                s.mean + se,
                color.filled(),
                8,
            )])
            .map_err(|e| err(&e))?;
        chart
            .draw_series([Text::new(
                name.clone(),
                (x + 0.01, s.mean),
                ("sans-serif", 12).into_font().color(&color),
            )])
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// (step, loss) points.
type Curve = Vec<(u64, f64)>;

/// Each configuration's loss per step, mean over its finished seeds.
fn loss_curves(plan: &SweepPlan, results: &[RunResult]) -> Result<Vec<(String, Curve)>> {
    let mut curves = Vec::new();
    for config in &plan.configs {
        let mut sums: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
        for r in results.iter().filter(|r| r.config == config.name) {
            let metrics = read_metrics(&plan.dir.join(&r.run_dir).join("metrics.jsonl"))?;
            let has_eval = metrics.iter().any(|m| m.eval_loss.is_some());
            for m in &metrics {
                let y = if has_eval { m.eval_loss } else { Some(m.loss) };
                if let Some(y) = y {
                    let slot = sums.entry(m.step).or_default();
                    slot.0 += y;
                    slot.1 += 1;
                }
            }
        }
        let curve = sums
            .into_iter()
            .map(|(step, (sum, n))| (step, sum / n as f64))
            .collect();
        curves.push((config.name.clone(), curve));
    }
    Ok(curves)
}

/// A range with a margin, or (0, 1) when there is nothing finite to show.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let margin = ((hi - lo) * 0.1).max(1e-3);
    (lo - margin, hi + margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let s = MeanSe::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean), (3, 2.0));
        // Sample standard deviation 1, so SE = 1/√3.
        assert!((s.se.unwrap() - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(MeanSe::of(&[5.0]).unwrap().se, None);
        assert_eq!(MeanSe::of(&[]), None);
    }
}
