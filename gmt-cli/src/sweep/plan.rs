//! A sweep file (`sweep.toml`) and the runs it stands for: base settings, configurations
//! (named lists and/or a grid of axes), seeds, and the evaluation after each run. Every run's
//! settings are built and checked here, before anything trains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cli::EvalTask;
use crate::settings::TrainSettings;

/// `sweep.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Where the runs (`runs/<configuration>/seed-<seed>/`), `results.jsonl` and `summary.md`
    /// go; `--output` overrides it.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Seeds crossed with every configuration; each is the run's `[train] seed` (data order
    /// and masks).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The configuration the others are compared with: a configuration's full name, or the
    /// name of one of `configs` (each configuration is then compared with it at the same axis
    /// values). Default: the first of `configs` (or the first configuration).
    #[serde(default)]
    pub baseline: Option<String>,
    /// A `gmt train` config file the runs start from (`base` is laid over it).
    #[serde(default)]
    pub base_config: Option<PathBuf>,
    /// Settings every run shares, in `gmt train`'s sections (`[base.model]`, `[base.train]`, …).
    #[serde(default)]
    pub base: toml::Table,
    /// A grid: every combination of these settings' values (`"gmt.mask_ratio" = [0.1, 0.5]`).
    #[serde(default)]
    pub axes: toml::Table,
    /// Named configurations, each a set of settings (`name = "sft"`, `gmt.mask_ratio = 0.0`)
    /// and optionally its own `seeds`; crossed with the axes when both are given.
    #[serde(default)]
    pub configs: Vec<toml::Table>,
    /// The evaluation of each finished run.
    #[serde(default)]
    pub eval: Option<EvalSpec>,
    /// Keep each run's exported model (`final/`, the model's size per run) after its
    /// evaluation (default true). Checkpoints, needed only to resume, are always deleted once
    /// a run is evaluated.
    #[serde(default = "yes")]
    pub keep_final: bool,
}

fn yes() -> bool {
    true
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// `[eval]` of a sweep: what `gmt eval` measures on each run's final model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Held-out data (GSM8K shape, `question`/`answer`, for `task = "gsm8k"`).
    pub data: PathBuf,
    /// `loss`, or `gsm8k` (loss and answer accuracy by greedy generation).
    #[serde(default = "default_task")]
    pub task: EvalTask,
    /// At most this many examples (0 = all).
    #[serde(default)]
    pub max_examples: usize,
    /// For `gsm8k`: the longest answer generated, in tokens.
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Sequences per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest sequence scored, in tokens.
    #[serde(default = "default_seq")]
    pub max_seq_len: usize,
}

fn default_task() -> EvalTask {
    EvalTask::Loss
}
fn default_new_tokens() -> usize {
    256
}
fn default_batch() -> usize {
    4
}
fn default_seq() -> usize {
    2048
}

/// One configuration: a name and the settings it changes (dotted keys).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Configuration {
    /// Its name in `results.jsonl` and `summary.md`.
    pub name: String,
    /// `gmt.mask_ratio` → 0.3, …
    pub changes: BTreeMap<String, toml::Value>,
    /// The `[[configs]]` entry it comes from (its `name`), if any.
    named: Option<String>,
    /// Its point of the axes' grid.
    point: BTreeMap<String, toml::Value>,
    /// Its own seeds (a `[[configs]]` entry's `seeds`), instead of the sweep's.
    seeds: Option<Vec<u64>>,
}

/// One training run of the sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Index into [`SweepPlan::configs`].
    pub config: usize,
    /// Its seed.
    pub seed: u64,
    /// `runs/<configuration>/seed-<seed>`, relative to the sweep's directory.
    pub rel_dir: PathBuf,
    /// The run's complete, validated settings (output directory included).
    pub settings: TrainSettings,
}

/// Everything a sweep will do, checked.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// The sweep's directory.
    pub dir: PathBuf,
    /// The configurations: `[[configs]]` in file order, each crossed with the axes' grid.
    pub configs: Vec<Configuration>,
    /// For each configuration, the index of the one it is compared with (itself for a
    /// baseline).
    pub baselines: Vec<usize>,
    /// Every run, seed by seed and, within a seed, configuration by configuration.
    pub runs: Vec<PlannedRun>,
    /// The evaluation after each run.
    pub eval: Option<EvalSpec>,
    /// Keep each run's `final/` model after its evaluation.
    pub keep_final: bool,
}

impl SweepPlan {
    /// Whether configuration `i` is a baseline.
    pub fn is_baseline(&self, i: usize) -> bool {
        self.baselines[i] == i
    }

    /// Reads `path` and builds every run's settings; any setting that does not exist or cannot
    /// work, and any two runs that would collide, is an error naming the run.
    pub fn from_file(path: &Path, output: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let spec: SweepSpec =
            toml::from_str(&text).with_context(|| format!("in sweep file {}", path.display()))?;
        Self::new(spec, output).with_context(|| format!("in sweep file {}", path.display()))
    }

    /// The plan of `spec` (`output` overrides its `output_dir`).
    pub fn new(spec: SweepSpec, output: Option<&Path>) -> Result<Self> {
        let dir = output
            .map(Path::to_path_buf)
            .or(spec.output_dir.clone())
            .context("no output directory: set `output_dir` in the sweep file or pass --output")?;
        let dir = std::path::absolute(&dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        if spec.seeds.is_empty() {
            bail!("`seeds` is empty: give at least one seed");
        }
        if let Some(seed) = first_duplicate(&spec.seeds) {
            bail!("`seeds` lists {seed} twice");
        }
        let mut base = match &spec.base_config {
            Some(file) => TrainSettings::read_table(file)?,
            None => toml::Table::new(),
        };
        crate::cli::overlay(&mut base, spec.base.clone());
        let configs = configurations(&spec)?;
        let baselines = baselines(&configs, spec.baseline.as_deref())?;
        // Seed by seed, every configuration within a seed: a sweep cut short still has
        // complete paired comparisons for the seeds it finished.
        let seeds_of = |c: &Configuration| c.seeds.clone().unwrap_or(spec.seeds.clone());
        let mut all_seeds: Vec<u64> = Vec::new();
        for seed in configs.iter().flat_map(seeds_of) {
            if !all_seeds.contains(&seed) {
                all_seeds.push(seed);
            }
        }
        let mut runs = Vec::new();
        for seed in all_seeds {
            for (index, config) in configs.iter().enumerate() {
                if !seeds_of(config).contains(&seed) {
                    continue;
                }
                let rel_dir = Path::new("runs")
                    .join(dir_name(&config.name))
                    .join(format!("seed-{seed}"));
                let settings = run_settings(&base, config, seed, &dir.join(&rel_dir))
                    .with_context(|| format!("configuration `{}`, seed {seed}", config.name))?;
                runs.push(PlannedRun {
                    config: index,
                    seed,
                    rel_dir,
                    settings,
                });
            }
        }
        check_collisions(&configs, &runs)?;
        if let Some(eval) = &spec.eval
            && eval.batch_size == 0
        {
            bail!("invalid setting `eval.batch_size`: must be at least 1");
        }
        Ok(Self {
            dir,
            configs,
            baselines,
            runs,
            eval: spec.eval,
            keep_final: spec.keep_final,
        })
    }
}

/// The named configurations crossed with the grid of the axes.
fn configurations(spec: &SweepSpec) -> Result<Vec<Configuration>> {
    let mut named = Vec::new();
    for (i, table) in spec.configs.iter().enumerate() {
        let mut changes = BTreeMap::new();
        flatten("", table, &mut changes);
        let name = match changes.remove("name") {
            Some(toml::Value::String(name)) if !name.is_empty() => Some(name),
            Some(other) => bail!("configs[{i}]: `name` must be a non-empty string, not {other}"),
            None => None,
        };
        let seeds = match changes.remove("seeds") {
            None => None,
            Some(value) => Some(
                value
                    .try_into::<Vec<u64>>()
                    .ok()
                    .filter(|s| !s.is_empty() && first_duplicate(s).is_none())
                    .with_context(|| {
                        format!("configs[{i}]: `seeds` must be a list of distinct seeds")
                    })?,
            ),
        };
        named.push((name, changes, seeds));
    }
    if named.is_empty() {
        named.push((None, BTreeMap::new(), None));
    }
    let mut axes = BTreeMap::new();
    flatten("", &spec.axes, &mut axes);
    let mut grid: Vec<BTreeMap<String, toml::Value>> = vec![BTreeMap::new()];
    for (key, values) in &axes {
        let toml::Value::Array(values) = values else {
            bail!("axis `{key}`: give a list of values, e.g. `\"{key}\" = [{values}]`");
        };
        if values.is_empty() {
            bail!("axis `{key}` has no values");
        }
        grid = grid
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut point = point.clone();
                    point.insert(key.clone(), v.clone());
                    point
                })
            })
            .collect();
    }
    let short = short_keys(axes.keys());
    let mut configs = Vec::new();
    for (name_given, changes, seeds) in &named {
        let name = name_given;
        for point in &grid {
            let mut all = changes.clone();
            for (key, value) in point {
                if all.insert(key.clone(), value.clone()).is_some() {
                    bail!("`{key}` is both an axis and set by a configuration");
                }
            }
            let axis_part: Vec<String> = point
                .iter()
                .map(|(key, value)| format!("{}={}", short[key], show(value)))
                .collect();
            let name = match (name, axis_part.is_empty()) {
                (Some(name), true) => name.clone(),
                (Some(name), false) => format!("{name},{}", axis_part.join(",")),
                (None, false) => axis_part.join(","),
                (None, true) if all.is_empty() => "base".to_string(),
                (None, true) => all
                    .iter()
                    .map(|(k, v)| format!("{k}={}", show(v)))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            configs.push(Configuration {
                name,
                changes: all,
                named: name_given.clone(),
                point: point.clone(),
                seeds: seeds.clone(),
            });
        }
    }
    Ok(configs)
}

/// Each configuration's baseline: `name` as a full configuration name, or as a `[[configs]]`
/// name taken at each configuration's own grid point; by default the first `[[configs]]`
/// entry (or the first configuration).
fn baselines(configs: &[Configuration], name: Option<&str>) -> Result<Vec<usize>> {
    if let Some(i) = name.and_then(|n| configs.iter().position(|c| c.name == n)) {
        return Ok(vec![i; configs.len()]);
    }
    let named = match name {
        Some(n) if configs.iter().any(|c| c.named.as_deref() == Some(n)) => Some(n.to_string()),
        Some(n) => bail!(
            "`baseline = \"{n}\"` names no configuration (they are: {})",
            names(configs)
        ),
        None => match &configs[0].named {
            Some(first) => Some(first.clone()),
            None => return Ok(vec![0; configs.len()]), // a grid alone: its first point
        },
    };
    Ok(configs
        .iter()
        .map(|c| {
            configs
                .iter()
                .position(|b| b.named == named && b.point == c.point)
                .unwrap_or(0)
        })
        .collect())
}

/// A run's settings: the base, the configuration's changes, its seed and directory.
fn run_settings(
    base: &toml::Table,
    config: &Configuration,
    seed: u64,
    dir: &Path,
) -> Result<TrainSettings> {
    let mut table = base.clone();
    for (key, value) in &config.changes {
        if key == "train.seed" || key == "train.output_dir" {
            bail!("`{key}` is the sweep's to set (`seeds`, `output_dir`), not a configuration's");
        }
        set_dotted(&mut table, key, value.clone())?;
    }
    let seed = i64::try_from(seed).context("a seed above i64::MAX")?;
    set_dotted(&mut table, "train.seed", toml::Value::Integer(seed))?;
    let dir = dir.to_string_lossy().into_owned();
    set_dotted(&mut table, "train.output_dir", toml::Value::String(dir))?;
    let settings = TrainSettings::from_table(table)?.with_absolute_paths()?;
    settings.validate()?;
    Ok(settings)
}

/// Two configurations with one name or one directory, or two runs that would train the same
/// thing, are errors.
fn check_collisions(configs: &[Configuration], runs: &[PlannedRun]) -> Result<()> {
    for (i, a) in configs.iter().enumerate() {
        for b in &configs[..i] {
            if a.name == b.name || dir_name(&a.name) == dir_name(&b.name) {
                bail!(
                    "two configurations are named `{}`: give each a distinct `name`",
                    a.name
                );
            }
        }
    }
    let without_dir = |run: &PlannedRun| {
        let mut s = run.settings.clone();
        s.train.output_dir = None;
        s
    };
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[..i] {
            if without_dir(a) == without_dir(b) {
                bail!(
                    "configurations `{}` and `{}` would train the same run (seed {}): their settings are identical",
                    configs[b.config].name,
                    configs[a.config].name,
                    a.seed
                );
            }
        }
    }
    Ok(())
}

/// Nested tables as dotted keys: `{gmt = {mask_ratio = 0.3}}` → `gmt.mask_ratio`.
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

/// Sets `a.b.c` in `table`, creating sections as needed.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut at = table;
    for (depth, part) in parts.iter().enumerate() {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(inner) => inner,
            _ => bail!(
                "`{key}`: `{}` is a setting, not a section",
                parts[..=depth].join(".")
            ),
        };
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// Each axis by its last component (`mask_ratio`), or in full where two axes share it.
fn short_keys<'a>(keys: impl Iterator<Item = &'a String> + Clone) -> BTreeMap<String, String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.clone()
        .map(|k| {
            let shared = keys.clone().filter(|o| last(o) == last(k)).count() > 1;
            (k.clone(), if shared { k.clone() } else { last(k) })
        })
        .collect()
}

/// A value as it appears in a configuration's name.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A configuration's name as a directory name: characters other than letters, digits and
/// `._=,+-` become `_`.
pub fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn names(configs: &[Configuration]) -> String {
    configs
        .iter()
        .map(|c| format!("`{}`", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_duplicate(seeds: &[u64]) -> Option<u64> {
    seeds
        .iter()
        .enumerate()
        .find(|(i, s)| seeds[..*i].contains(s))
        .map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        let base = "output_dir = \"/tmp/sweep\"\nbase = { model = { path = \"m\" }, data = { train = \"d\" } }\n";
        toml::from_str(&format!("{base}{text}")).unwrap()
    }

    #[test]
    fn axes_make_a_grid_crossed_with_seeds() {
        let plan = SweepPlan::new(
            spec("seeds = [1, 2]\n[axes]\n\"gmt.mask_ratio\" = [0.1, 0.5]\ngmt.scope = [\"tensor\", \"global\"]\n"),
            None,
        )
        .unwrap();
        let names: Vec<&str> = plan.configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mask_ratio=0.1,scope=tensor",
                "mask_ratio=0.1,scope=global",
                "mask_ratio=0.5,scope=tensor",
                "mask_ratio=0.5,scope=global"
            ]
        );
        assert_eq!(plan.runs.len(), 8);
        assert_eq!(plan.baselines, [0; 4], "a grid alone: its first point");
        let run = &plan.runs[7];
        assert_eq!((run.settings.gmt.mask_ratio, run.seed), (0.5, 2));
        assert_eq!(
            (plan.runs[1].seed, plan.runs[1].config),
            (1, 1),
            "seed by seed"
        );
        assert_eq!(run.settings.train.seed, 2);
        assert_eq!(run.settings.gmt.seed, 2, "the mask seed follows the run's");
        assert_eq!(
            run.settings.train.output_dir.as_deref(),
            Some(Path::new(
                "/tmp/sweep/runs/mask_ratio=0.5,scope=global/seed-2"
            ))
        );
    }

    #[test]
    fn the_readme_example_plans_six_configurations() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("# sweep.toml\n")
            .expect("the README's sweep example");
        let end = start + readme[start..].find("```").unwrap();
        let spec: SweepSpec = toml::from_str(&readme[start..end]).unwrap();
        let plan = SweepPlan::new(spec, None).unwrap();
        let names: Vec<&str> = plan.configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sft,lr=0.00001",
                "sft,lr=0.0001",
                "gmt,lr=0.00001",
                "gmt,lr=0.0001",
                "random,lr=0.00001",
                "random,lr=0.0001"
            ]
        );
        assert_eq!(plan.runs.len(), 16);
        // `baseline = "sft"`: each configuration against sft at its own learning rate.
        assert_eq!(plan.baselines, [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn a_configuration_may_have_its_own_seeds() {
        let plan = SweepPlan::new(
            spec("seeds = [0, 1, 2]\n[[configs]]\nname = \"sft\"\ngmt.mask_ratio = 0.0\n[[configs]]\nname = \"gmt-0.1\"\ngmt.mask_ratio = 0.1\nseeds = [0, 1]\n"),
            None,
        )
        .unwrap();
        let runs: Vec<(usize, u64)> = plan.runs.iter().map(|r| (r.config, r.seed)).collect();
        assert_eq!(runs, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]);
        assert!(!plan.configs[1].changes.contains_key("seeds"));
        let err = SweepPlan::new(spec("[[configs]]\nseeds = [1, 1]\n"), None).unwrap_err();
        assert!(format!("{err:#}").contains("distinct seeds"), "{err:#}");
    }

    #[test]
    fn the_study_sweeps_plan() {
        for (file, runs) in [("arithmetic", 17), ("gsm8k", 9)] {
            let path = format!("{}/../docs/study/{file}.toml", env!("CARGO_MANIFEST_DIR"));
            let plan = SweepPlan::from_file(Path::new(&path), None).unwrap();
            assert_eq!(plan.runs.len(), runs, "{file}");
            assert!(
                plan.baselines.iter().all(|&b| b == 0),
                "{file}: against sft"
            );
        }
    }

    #[test]
    fn named_configurations_and_the_baseline() {
        let plan = SweepPlan::new(
            spec("baseline = \"sft\"\n[[configs]]\nname = \"gmt\"\ngmt.mask_ratio = 0.3\n[[configs]]\nname = \"sft\"\ngmt.mask_ratio = 0.0\n"),
            None,
        )
        .unwrap();
        assert_eq!(plan.baselines, [1, 1]);
        assert_eq!(plan.runs[0].settings.gmt.mask_ratio, 0.3);
    }

    #[test]
    fn bad_sweeps_are_refused_before_any_run() {
        for (text, expected) in [
            (
                "[axes]\n\"gmt.mask_ratoi\" = [0.1]\n",
                "did you mean `mask_ratio`",
            ),
            (
                "[axes]\n\"gmt.mask_ratio\" = 0.1\n",
                "give a list of values",
            ),
            ("[axes]\n\"gmt.mask_ratio\" = [1.5]\n", "gmt.mask_ratio"),
            (
                "[[configs]]\nname = \"a\"\n[[configs]]\nname = \"a\"\ngmt.mask_ratio = 0.1\n",
                "two configurations are named `a`",
            ),
            (
                "[[configs]]\nname = \"a\"\ngmt.mask_ratio = 0.2\n[[configs]]\nname = \"b\"\n",
                "would train the same run",
            ),
            ("seeds = [1, 1]\n", "lists 1 twice"),
            ("baseline = \"x\"\n", "names no configuration"),
            ("[axes]\n\"train.seed\" = [1, 2]\n", "the sweep's to set"),
        ] {
            let err = format!("{:#}", SweepPlan::new(spec(text), None).unwrap_err());
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
