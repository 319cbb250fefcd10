//! A small instruction dataset the project generates itself: arithmetic word problems with
//! worked answers in GSM8K's format (`… #### <answer>`), split into disjoint train and test
//! sets. Used by the README's demo to show GMT improving a real model on held-out problems.
//! As preference pairs (for DPO), each problem's worked answer is chosen over the same answer
//! with one arithmetic slip.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

const NAMES: &[&str] = &[
    "Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Omar",
    "Priya", "Sam", "Tara", "Yusuf",
];
const ITEMS: &[&str] = &[
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "cards",
    "coins",
];

/// One problem: the question and a worked answer ending in `#### <number>`.
pub fn problem(rng: &mut impl Rng) -> (String, String) {
    let name = *NAMES.choose(rng).expect("non-empty");
    let item = *ITEMS.choose(rng).expect("non-empty");
    match rng.random_range(0..5) {
        0 => {
            let (a, b) = (rng.random_range(3..60), rng.random_range(2..40));
            (
                format!(
                    "{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
                ),
                format!("{name} has {a} + {b} = {} {item}.\n#### {}", a + b, a + b),
            )
        }
        1 => {
            let a = rng.random_range(10..90);
            let b = rng.random_range(1..a);
            (
                format!(
                    "{name} had {a} {item} and gave {b} of them away. How many {item} are left?"
                ),
                format!(
                    "{name} has {a} - {b} = {} {item} left.\n#### {}",
                    a - b,
                    a - b
                ),
            )
        }
        2 => {
            let (a, b) = (rng.random_range(2..10), rng.random_range(2..13));
            (
                format!(
                    "{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
                ),
                format!("{name} buys {a} * {b} = {} {item}.\n#### {}", a * b, a * b),
            )
        }
        3 => {
            let (each, friends) = (rng.random_range(2..12), rng.random_range(2..9));
            let total = each * friends;
            (
                format!(
                    "{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
                ),
                format!("Each friend gets {total} / {friends} = {each} {item}.\n#### {each}"),
            )
        }
        _ => {
            let (a, b) = (rng.random_range(5..40), rng.random_range(2..30));
            let c = rng.random_range(1..a + b);
            let total = a + b - c;
            (
                format!(
                    "{name} has {a} {item}, finds {b} more and then loses {c}. How many {item} does {name} have?"
                ),
                format!(
                    "First {a} + {b} = {} {item}. Then {} - {c} = {total}.\n#### {total}",
                    a + b,
                    a + b
                ),
            )
        }
    }
}

/// The worked `answer` with one arithmetic slip: its final result off by 1 or 2, in the last
/// equation and after `####`.
pub fn slip(answer: &str, rng: &mut impl Rng) -> String {
    let value: i64 = answer
        .rsplit_once("#### ")
        .and_then(|(_, v)| v.trim().parse().ok())
        .expect("generated answers end in #### <number>");
    let wrong = loop {
        let w = value + [-2, -1, 1, 2][rng.random_range(0..4)];
        if w >= 0 && w != value {
            break w;
        }
    };
    let mut text = answer.replace(&format!("#### {value}"), &format!("#### {wrong}"));
    let last = [format!("= {value} "), format!("= {value}.")]
        .iter()
        .filter_map(|p| text.rfind(p.as_str()))
        .max();
    if let Some(at) = last {
        let end = at + 2 + value.to_string().len();
        text.replace_range(at + 2..end, &wrong.to_string());
    }
    text
}

/// The most problems `gmt make-data` writes (train and test together): far more than a
/// fine-tuning run uses, and within what the generator can make distinct.
pub const MAX_PROBLEMS: usize = 1_000_000;

/// Writes `train.jsonl` and `test.jsonl` (fields `question`, `answer`) into `dir`; no test
/// question is also a training question. With `pairs`, `train.jsonl` and `test_pairs.jsonl`
/// hold preference pairs (`prompt`, `chosen`, `rejected`) instead, from the same problems.
/// Data files already in `dir` are an error naming them, unless `force`.
pub fn write_dataset(
    dir: &Path,
    sizes: (usize, usize),
    seed: u64,
    pairs: bool,
    force: bool,
) -> Result<()> {
    let (train, test) = sizes;
    anyhow::ensure!(
        train.saturating_add(test) <= MAX_PROBLEMS,
        "--train {train} and --test {test}: at most {MAX_PROBLEMS} problems in all"
    );
    let names: &[&str] = if pairs {
        &["test.jsonl", "train.jsonl", "test_pairs.jsonl"]
    } else {
        &["test.jsonl", "train.jsonl"]
    };
    let existing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| dir.join(n).exists())
        .collect();
    anyhow::ensure!(
        existing.is_empty() || force,
        "{} already holds {}: pass --force to replace, or choose another --output",
        dir.display(),
        existing.join(", ")
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut take = |n: usize| -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(n);
        // The generator has far more distinct problems than any sensible request; the bound
        // only guards against an endless loop for absurd sizes.
        for _ in 0..n * 1000 {
            if out.len() == n {
                break;
            }
            let p = problem(&mut rng);
            if seen.insert(p.0.clone()) {
                out.push(p);
            }
        }
        out
    };
    let test_set = take(test);
    let train_set = take(train);
    anyhow::ensure!(
        test_set.len() == test && train_set.len() == train,
        "cannot generate that many distinct problems"
    );
    let pair = |(question, answer): &(String, String), rng: &mut StdRng| json!({ "prompt": question, "chosen": answer, "rejected": slip(answer, rng) });
    let problems = |set: &[(String, String)]| -> Vec<serde_json::Value> {
        set.iter()
            .map(|(q, a)| json!({ "question": q, "answer": a }))
            .collect()
    };
    let mut files = vec![("test.jsonl", problems(&test_set))];
    if pairs {
        files.push((
            "train.jsonl",
            train_set.iter().map(|p| pair(p, &mut rng)).collect(),
        ));
        files.push((
            "test_pairs.jsonl",
            test_set.iter().map(|p| pair(p, &mut rng)).collect(),
        ));
    } else {
        files.push(("train.jsonl", problems(&train_set)));
    }
    for (name, records) in files {
        let path = dir.join(name);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        for record in records {
            writeln!(file, "{record}")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        file.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::reference_answer;

    #[test]
    fn answers_are_right_and_sets_are_disjoint() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let (question, answer) = problem(&mut rng);
            let value = reference_answer(&answer).expect("#### answer");
            // The worked answer's last equation computes the same value.
            let line = answer.lines().next().unwrap();
            assert!(
                line.contains(&format!("= {value}")),
                "{question} / {answer}"
            );
        }
        let dir = std::env::temp_dir().join(format!("gmt-arith-{}", std::process::id()));
        write_dataset(&dir, (300, 50), 0, false, false).unwrap();
        let read = |n: &str| -> Vec<String> {
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].to_string()
                })
                .collect()
        };
        let (train, test) = (read("train.jsonl"), read("test.jsonl"));
        assert_eq!((train.len(), test.len()), (300, 50));
        let train: HashSet<_> = train.into_iter().collect();
        assert!(test.iter().all(|q| !train.contains(q)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_slip_changes_only_the_final_result() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..300 {
            let (_, answer) = problem(&mut rng);
            let wrong = slip(&answer, &mut rng);
            let (right, bad) = (
                reference_answer(&answer).unwrap(),
                reference_answer(&wrong).unwrap(),
            );
            assert_ne!(right, bad, "{answer} / {wrong}");
            let last_line = wrong.lines().next().unwrap();
            assert!(
                last_line.contains(&format!("= {bad}")),
                "{answer} / {wrong}"
            );
            assert!(
                answer.len().abs_diff(wrong.len()) <= 2,
                "{answer} / {wrong}"
            );
        }
    }
}
