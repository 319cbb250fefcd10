//! Which parameters are never masked, chosen by glob patterns over module paths.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::GmtError;

/// A set of glob patterns over dotted module paths (`layers.0.mlp.up_proj.weight`).
///
/// `*` matches any run of characters, dots included, so `*norm*` matches every norm weight.
///
/// ```
/// use gmt_core::masking::ParamFilter;
///
/// let filter = ParamFilter::new(&["*norm*".to_string()]).unwrap();
/// assert!(filter.is_match("layers.3.input_layernorm.weight"));
/// assert!(!filter.is_match("layers.3.mlp.up_proj.weight"));
/// ```
#[derive(Clone, Debug)]
pub struct ParamFilter {
    patterns: Vec<String>,
    set: GlobSet,
}

impl ParamFilter {
    /// Compiles the patterns; an invalid one is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, GmtError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|e| GmtError::InvalidPattern {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| GmtError::InvalidPattern {
            pattern: patterns.join(", "),
            reason: e.to_string(),
        })?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// Whether any pattern matches `path`.
    pub fn is_match(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// Fails on the first pattern that matches none of `paths`.
    pub fn check_all_used<'a>(
        &self,
        paths: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), GmtError> {
        let mut used = vec![false; self.patterns.len()];
        for path in paths.clone() {
            for index in self.set.matches(path) {
                used[index] = true;
            }
        }
        match used.iter().position(|u| !u) {
            None => Ok(()),
            Some(index) => Err(GmtError::PatternMatchesNothing {
                pattern: self.patterns[index].clone(),
                example: paths.into_iter().next().unwrap_or_default().to_string(),
            }),
        }
    }
}
