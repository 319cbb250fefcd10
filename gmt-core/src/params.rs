//! The float parameters of a module, with their paths, in visiting order.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, backend::Backend};

/// One float parameter of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// burn's id of the parameter.
    pub id: ParamId,
    /// Dotted module path, e.g. `layers.0.self_attn.q_proj.weight`.
    pub path: String,
    /// Number of entries.
    pub numel: usize,
    /// Whether GMT may mask it: false when an `exclude` pattern matches (it is still trained).
    pub maskable: bool,
}

/// Lists a module's float parameters in the order burn visits them (field order), which is
/// the order every GMT step uses, so random masks are reproducible.
pub fn list_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut lister = ParamLister {
        stack: Vec::new(),
        params: Vec::new(),
    };
    module.visit(&mut lister);
    lister.params
}

struct ParamLister {
    stack: Vec<String>,
    params: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for ParamLister {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push(ParamInfo {
            id: param.id,
            path: self.stack.join("."),
            numel: param.lazy_shape().num_elements(),
            maskable: true,
        });
    }
}
