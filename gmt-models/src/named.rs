//! Parameters and gradients under their Hugging Face names and layouts.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::{HostTensor, hf_name};

/// Tracks the module path during a visit.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    /// The HF name of the current parameter, and whether it is a Linear weight, which burn
    /// stores `[in, out]` and Hugging Face `[out, in]`.
    fn current(&self) -> (String, bool) {
        let path = self.0.join(".");
        let linear = path.ends_with("_proj.weight") || path == "lm_head.weight";
        (hf_name(&path), linear)
    }
}

fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>, linear: bool) -> HostTensor {
    HostTensor::from_tensor(if linear { tensor.transpose() } else { tensor })
}

/// Every float parameter of `module`, HF-named, in visiting order.
pub fn named_weights<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, HostTensor)> {
    struct Weights {
        path: Path,
        out: Vec<(String, HostTensor)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Weights {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.0.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (name, linear) = self.path.current();
            self.out.push((name, host(param.val(), linear)));
        }
    }
    let mut visitor = Weights {
        path: Path::default(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

/// The gradient of every parameter that has one, HF-named and laid out like the weights.
pub fn named_gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(String, HostTensor)> {
    struct Gradients<'a, B: AutodiffBackend> {
        path: Path,
        grads: &'a B::Gradients,
        out: Vec<(String, HostTensor)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.0.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = param.grad(self.grads) {
                let (name, linear) = self.path.current();
                self.out.push((name, host(grad, linear)));
            }
        }
    }
    let mut visitor = Gradients::<B> {
        path: Path::default(),
        grads,
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}
