//! The input projections of attention (`q_proj`, `k_proj`, `v_proj`, or Phi-3's fused
//! `qkv_proj`) and of the MLP (`gate_proj` and `up_proj`, or the fused `gate_up_proj`): one enum
//! each, so a layer holds one layout or the other and nothing else can be built.
//!
//! Why `Module` is written by hand here: parameter paths are checkpoint keys (kiln's training
//! checkpoints, the parameter walks of `kiln-train`, PEFT adapters), and burn's derive would
//! change them. A derived enum enters its variant's name (`self_attn.qkv.Separate.q_proj`) and a
//! derived struct its field's name. These enums visit each projection under its checkpoint name
//! and [`Attention`](crate::Attention) and [`Mlp`](crate::Mlp) visit the enum without a segment of
//! its own (`projection_module!`), so every path is the one the checkpoint (and the
//! `Option` fields these enums replaced) gave: `self_attn.q_proj.base…`, `mlp.gate_up_proj…`.
//!
//! The enums are generic over the layer type so the fused CPU path holds its host copies of the
//! projections in the same shape (`QkvProj<HostLinear>`).
use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::tensor::Device;
use kiln_lora::LoraLinear;

/// The attention's input projections.
///
/// # Shapes
/// Separate: `q_proj` `[hidden] -> [heads · hd]`, `k_proj` and `v_proj`
/// `[hidden] -> [kv_heads · hd]`. Fused: `qkv_proj` `[hidden] -> [(heads + 2 · kv_heads) · hd]`,
/// output columns `[q | k | v]`.
#[derive(Debug, Clone)]
pub enum QkvProj<L = LoraLinear> {
    Separate { q_proj: L, k_proj: L, v_proj: L },
    Fused { qkv_proj: L },
}

/// The MLP's input projections.
///
/// # Shapes
/// Separate: `gate_proj`, `up_proj` `[hidden] -> [intermediate]`. Fused: `gate_up_proj`
/// `[hidden] -> [2 · intermediate]`, output columns `[gate | up]`.
#[derive(Debug, Clone)]
pub enum GateUpProj<L = LoraLinear> {
    Separate { gate_proj: L, up_proj: L },
    Fused { gate_up_proj: L },
}

impl<L> QkvProj<L> {
    /// The projections with their module names, in checkpoint (and forward) order.
    pub fn named(&self) -> Vec<(&'static str, &L)> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj)],
            Self::Fused { qkv_proj } => vec![("qkv_proj", qkv_proj)],
        }
    }

    /// Same as [`Self::named`], mutably.
    pub fn named_mut(&mut self) -> Vec<(&'static str, &mut L)> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj)],
            Self::Fused { qkv_proj } => vec![("qkv_proj", qkv_proj)],
        }
    }

    /// The projection called `name` (`"q_proj"`, …, `"qkv_proj"`), when this layout has it.
    pub fn get(&self, name: &str) -> Option<&L> {
        by_name(self.named(), name)
    }

    /// Same as [`Self::get`], mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut L> {
        by_name(self.named_mut(), name)
    }

    /// The same layout with every projection converted by `f` (given its name), or `None` when
    /// `f` refuses one.
    pub fn try_map_each<M>(
        self,
        mut f: impl FnMut(&'static str, L) -> Option<M>,
    ) -> Option<QkvProj<M>> {
        Some(match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => QkvProj::Separate {
                q_proj: f("q_proj", q_proj)?,
                k_proj: f("k_proj", k_proj)?,
                v_proj: f("v_proj", v_proj)?,
            },
            Self::Fused { qkv_proj } => QkvProj::Fused {
                qkv_proj: f("qkv_proj", qkv_proj)?,
            },
        })
    }

    /// The same layout with every projection converted by `f` (given its name).
    pub fn map_each<M>(self, mut f: impl FnMut(&'static str, L) -> M) -> QkvProj<M> {
        match self.try_map_each(|n, l| Some(f(n, l))) {
            Some(p) => p,
            None => unreachable!("the conversion refuses nothing"),
        }
    }

    /// A layout of references to these projections.
    pub fn as_ref(&self) -> QkvProj<&L> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => QkvProj::Separate {
                q_proj,
                k_proj,
                v_proj,
            },
            Self::Fused { qkv_proj } => QkvProj::Fused { qkv_proj },
        }
    }
}

impl<L> GateUpProj<L> {
    /// The projections with their module names, in checkpoint (and forward) order.
    pub fn named(&self) -> Vec<(&'static str, &L)> {
        match self {
            Self::Separate { gate_proj, up_proj } => {
                vec![("gate_proj", gate_proj), ("up_proj", up_proj)]
            }
            Self::Fused { gate_up_proj } => vec![("gate_up_proj", gate_up_proj)],
        }
    }

    /// Same as [`Self::named`], mutably.
    pub fn named_mut(&mut self) -> Vec<(&'static str, &mut L)> {
        match self {
            Self::Separate { gate_proj, up_proj } => {
                vec![("gate_proj", gate_proj), ("up_proj", up_proj)]
            }
            Self::Fused { gate_up_proj } => vec![("gate_up_proj", gate_up_proj)],
        }
    }

    /// The projection called `name` (`"gate_proj"`, `"up_proj"` or `"gate_up_proj"`), when this
    /// layout has it.
    pub fn get(&self, name: &str) -> Option<&L> {
        by_name(self.named(), name)
    }

    /// Same as [`Self::get`], mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut L> {
        by_name(self.named_mut(), name)
    }

    /// The same layout with every projection converted by `f` (given its name), or `None` when
    /// `f` refuses one.
    pub fn try_map_each<M>(
        self,
        mut f: impl FnMut(&'static str, L) -> Option<M>,
    ) -> Option<GateUpProj<M>> {
        Some(match self {
            Self::Separate { gate_proj, up_proj } => GateUpProj::Separate {
                gate_proj: f("gate_proj", gate_proj)?,
                up_proj: f("up_proj", up_proj)?,
            },
            Self::Fused { gate_up_proj } => GateUpProj::Fused {
                gate_up_proj: f("gate_up_proj", gate_up_proj)?,
            },
        })
    }

    /// The same layout with every projection converted by `f` (given its name).
    pub fn map_each<M>(self, mut f: impl FnMut(&'static str, L) -> M) -> GateUpProj<M> {
        match self.try_map_each(|n, l| Some(f(n, l))) {
            Some(p) => p,
            None => unreachable!("the conversion refuses nothing"),
        }
    }

    /// A layout of references to these projections.
    pub fn as_ref(&self) -> GateUpProj<&L> {
        match self {
            Self::Separate { gate_proj, up_proj } => GateUpProj::Separate { gate_proj, up_proj },
            Self::Fused { gate_up_proj } => GateUpProj::Fused { gate_up_proj },
        }
    }
}

/// `Module` for a projection enum: each projection visited and mapped under its own name (no
/// segment for the enum or its variant), with `$container` as the container type the enclosing
/// struct's derive passed for the former fields.
macro_rules! projections_module {
    ($ty:ident, $container:literal) => {
        impl Module for $ty {
            fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
                for (name, l) in self.named() {
                    visitor.enter_module(name, $container);
                    l.visit(visitor);
                    visitor.exit_module(name, $container);
                }
            }

            fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
                self.map_each(|name, l| {
                    mapper.enter_module(name, $container);
                    let l = l.map(mapper);
                    mapper.exit_module(name, $container);
                    l
                })
            }

            fn collect_devices(&self, devices: Devices) -> Devices {
                self.named()
                    .into_iter()
                    .fold(devices, |d, (_, l)| l.collect_devices(d))
            }

            fn to_device(self, device: &Device) -> Self {
                self.map_each(|_, l| l.to_device(device))
            }

            fn fork(self, device: &Device) -> Self {
                self.map_each(|_, l| l.fork(device))
            }

            fn train(self) -> Self {
                self.map_each(|_, l| l.train())
            }

            fn valid(&self) -> Self {
                self.as_ref().map_each(|_, l| l.valid())
            }

            fn materialize(self) -> Self {
                self.map_each(|_, l| l.materialize())
            }
        }

        impl ModuleDisplayDefault for $ty {
            fn content(&self, content: Content) -> Option<Content> {
                self.named()
                    .into_iter()
                    .fold(content.set_top_level_type(stringify!($ty)), |c, (n, l)| {
                        c.add(n, l)
                    })
                    .optional()
            }

            fn num_params(&self) -> usize {
                Module::num_params(self)
            }
        }

        impl ModuleDisplay for $ty {}
    };
}

projections_module!(QkvProj, "Struct:Attention");
projections_module!(GateUpProj, "Struct:Mlp");

/// `Module` for a layer struct holding one projection enum (`$flat`, visited with no segment of
/// its own: its projections appear under their checkpoint names) and other module fields
/// (`$field`, visited under their field names as burn's derive does), in that order; the other
/// fields are constants, copied.
macro_rules! projection_module {
    ($ty:ident, $flat:ident, [$($field:ident),*]) => {
        impl burn::module::Module for $ty {
            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                burn::module::Module::visit(&self.$flat, visitor);
                $(
                    visitor.enter_module(stringify!($field), concat!("Struct:", stringify!($ty)));
                    burn::module::Module::visit(&self.$field, visitor);
                    visitor.exit_module(stringify!($field), concat!("Struct:", stringify!($ty)));
                )*
            }

            fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
                let $flat = burn::module::Module::map(self.$flat, mapper);
                $(
                    mapper.enter_module(stringify!($field), concat!("Struct:", stringify!($ty)));
                    let $field = burn::module::Module::map(self.$field, mapper);
                    mapper.exit_module(stringify!($field), concat!("Struct:", stringify!($ty)));
                )*
                Self { $flat, $($field,)* ..self }
            }

            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                let devices = burn::module::Module::collect_devices(&self.$flat, devices);
                $(let devices = burn::module::Module::collect_devices(&self.$field, devices);)*
                devices
            }

            fn to_device(self, device: &burn::tensor::Device) -> Self {
                Self {
                    $flat: burn::module::Module::to_device(self.$flat, device),
                    $($field: burn::module::Module::to_device(self.$field, device),)*
                    ..self
                }
            }

            fn fork(self, device: &burn::tensor::Device) -> Self {
                Self {
                    $flat: burn::module::Module::fork(self.$flat, device),
                    $($field: burn::module::Module::fork(self.$field, device),)*
                    ..self
                }
            }

            fn train(self) -> Self {
                Self {
                    $flat: burn::module::Module::train(self.$flat),
                    $($field: burn::module::Module::train(self.$field),)*
                    ..self
                }
            }

            fn valid(&self) -> Self {
                Self {
                    $flat: burn::module::Module::valid(&self.$flat),
                    $($field: burn::module::Module::valid(&self.$field),)*
                    ..self.clone()
                }
            }

            fn materialize(self) -> Self {
                Self {
                    $flat: burn::module::Module::materialize(self.$flat),
                    $($field: burn::module::Module::materialize(self.$field),)*
                    ..self
                }
            }
        }

        impl burn::module::ModuleDisplayDefault for $ty {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                let content = self
                    .$flat
                    .named()
                    .into_iter()
                    .fold(content.set_top_level_type(stringify!($ty)), |c, (n, l)| {
                        c.add(n, l)
                    });
                content$(.add(stringify!($field), &self.$field))*.optional()
            }

            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl burn::module::ModuleDisplay for $ty {}

        impl core::fmt::Display for $ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let formatted = burn::module::ModuleDisplay::format(self, Default::default());
                write!(f, "{formatted}")
            }
        }
    };
}
pub(crate) use projection_module;

/// The entry of a `(name, projection)` list called `name` (shared by both layouts' `get`s).
fn by_name<T>(named: Vec<(&'static str, T)>, name: &str) -> Option<T> {
    named
        .into_iter()
        .find_map(|(n, l)| (n == name).then_some(l))
}
