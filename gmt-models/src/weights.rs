//! Named host tensors on their way into (or out of) a model, with the bookkeeping that turns
//! a mismatch into one error listing every missing, misshapen and unexpected tensor.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::ModelError;

/// A tensor in host memory, `f32`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Copies a device tensor to the host.
    pub fn from_tensor<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().iter::<f32>().collect();
        Self { shape, data }
    }
}

/// Weights by Hugging Face name, consumed as the model is built.
#[derive(Debug)]
pub struct WeightMap {
    source_name: String,
    tensors: BTreeMap<String, HostTensor>,
    missing: Vec<String>,
    misshapen: Vec<String>,
    /// When set, absent tensors are filled instead of reported missing (see [`WeightMap::random`]).
    fill: Option<rand_chacha::ChaCha8Rng>,
}

impl WeightMap {
    /// Weights read from `source_name` (a path, for errors).
    pub fn new(source_name: impl Into<String>, tensors: BTreeMap<String, HostTensor>) -> Self {
        Self {
            source_name: source_name.into(),
            tensors,
            missing: Vec::new(),
            misshapen: Vec::new(),
            fill: None,
        }
    }

    /// No stored weights: every tensor the model asks for is made up — norm weights 1, all
    /// others uniform in ±0.02 from `seed`. For tests and benchmarks, where the builder's own
    /// shapes are the ones to use.
    pub fn random(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            fill: Some(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
            ..Self::new("random weights", BTreeMap::new())
        }
    }

    /// Names still present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name` as a device tensor of `shape`. A missing or misshapen tensor
    /// is recorded for [`finish`](Self::finish) and replaced by zeros so building can go on
    /// and every problem is reported at once.
    pub fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Tensor<B, D> {
        match self.tensors.remove(name) {
            Some(t) if t.shape == shape => {
                Tensor::from_data(TensorData::new(t.data, shape), device)
            }
            Some(t) => {
                self.misshapen
                    .push(format!("{name}: shape {:?}, expected {shape:?}", t.shape));
                Tensor::zeros(shape, device)
            }
            None => match self.fill.as_mut() {
                Some(rng) => {
                    use rand::Rng;
                    let n = shape.iter().product();
                    let data: Vec<f32> = if name.ends_with("norm.weight") {
                        vec![1.0; n]
                    } else {
                        (0..n)
                            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 0.02)
                            .collect()
                    };
                    Tensor::from_data(TensorData::new(data, shape), device)
                }
                None => {
                    self.missing.push(name.to_string());
                    Tensor::zeros(shape, device)
                }
            },
        }
    }

    /// Fails if any tensor was missing or misshapen, or if tensors were left unused.
    pub fn finish(self) -> Result<(), ModelError> {
        let mut details = String::new();
        let mut section = |title: &str, items: &[String]| {
            if !items.is_empty() {
                details.push_str(&format!("\n  {title} ({}): {}", items.len(), list(items)));
            }
        };
        section("missing", &self.missing);
        section("wrong shape", &self.misshapen);
        let unexpected: Vec<String> = self.tensors.into_keys().collect();
        section("unexpected", &unexpected);
        if details.is_empty() {
            Ok(())
        } else {
            Err(ModelError::WeightMismatch {
                source_name: self.source_name,
                details,
            })
        }
    }
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(", … and {} more", items.len() - SHOWN));
    }
    text
}
