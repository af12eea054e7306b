//! Adapters by name on a model: targeting, activation, weighted combination, counts.
#![allow(clippy::unwrap_used)]
use burn::tensor::Device;
use kiln_lora::{Combination, LoraConfig, LoraError, LoraModel, ParamCount, TargetModules};

use crate::fake::{Q, Tiny, V, input, max_abs_diff, random};
use kiln_lora::linear::LoraLinear;

fn names(n: &[&str]) -> TargetModules {
    TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
}

/// Gives every adapter of `name` a non-zero B, as training would.
pub fn train_b(model: &mut LoraModel<Tiny>, name: &str, device: &Device) {
    use kiln_lora::AdapterTarget;
    model.model.visit_linears_mut(&mut |_, l: &mut LoraLinear| {
        if let Some(a) = l.adapter_mut(name) {
            let [r, out] = a.lora_b.dims();
            a.lora_b = a
                .lora_b
                .clone()
                .map(|_| random([r, out], device))
                .set_require_grad(true);
        }
    });
}

#[test]
fn report_matches_peft_format() {
    // Expected line printed by Python: f"{100 * 4884480 / 139399488:.4f}" == "3.5039".
    let c = ParamCount {
        trainable: 4_884_480,
        all: 139_399_488,
    };
    assert_eq!(
        c.to_string(),
        "trainable params: 4,884,480 || all params: 139,399,488 || trainable%: 3.5039"
    );
}

#[test]
fn counts_follow_targets_rank_pattern_and_modules_to_save() {
    let device = Device::default();
    let base_params = 10 * 6 + 6 * 6 + 6 + 6 * 4 + 4 * 10;
    let mut c = LoraConfig::new(2, 4.0, names(&["q_proj", "v_proj"]));
    c.rank_pattern = vec![("v_proj".into(), 3)];
    let m = LoraModel::with_adapter(Tiny::new(&device), "default", c.clone()).unwrap();
    let lora = 2 * (6 + 6) + 3 * (6 + 4);
    assert_eq!(
        m.param_count(),
        ParamCount {
            trainable: lora,
            all: base_params + lora
        }
    );

    c.modules_to_save = Some(vec!["embed_tokens".into(), "lm_head".into()]);
    c.bias = kiln_lora::Bias::LoraOnly;
    let m = LoraModel::with_adapter(Tiny::new(&device), "default", c).unwrap();
    assert_eq!(m.param_count().trainable, lora + 60 + 40 + 6);

    let all = LoraConfig::new(2, 4.0, TargetModules::AllLinear);
    let m = LoraModel::with_adapter(Tiny::new(&device), "default", all).unwrap();
    assert!(
        m.model.lm_head.adapters.is_empty(),
        "all-linear skips the output layer"
    );
    assert_eq!(m.model.v_proj.adapters.len(), 1);
}

#[test]
fn several_active_adapters_add_up() {
    let device = Device::default();
    let mut m = LoraModel::with_adapter(
        Tiny::new(&device),
        "a",
        LoraConfig::new(2, 4.0, names(&["q_proj"])),
    )
    .unwrap();
    m.add_adapter("b", LoraConfig::new(3, 3.0, names(&["q_proj", "v_proj"])))
        .unwrap();
    train_b(&mut m, "a", &device);
    train_b(&mut m, "b", &device);
    assert_eq!(m.active_adapters(), ["a"]);
    let x = input(&device);
    let base = {
        m.disable_adapters();
        let y = m.model.forward(x.clone());
        m.enable_adapters();
        y
    };
    let ya = m.model.forward(x.clone());
    m.set_active(&["b"]).unwrap();
    let yb = m.model.forward(x.clone());
    m.set_active(&["a", "b"]).unwrap();
    let yab = m.model.forward(x.clone());
    assert!(max_abs_diff(ya.clone(), base.clone()) > 1e-3);
    // q_proj gets both deltas; v_proj only b's, so the sum is not linear in general: check merge.
    m.merge().unwrap();
    assert!(max_abs_diff(yab.clone(), m.model.forward(x.clone())) < 1e-5);
    m.unmerge();
    assert!(max_abs_diff(yab, yb.clone()) > 1e-4);
    assert!(matches!(m.set_active(&["zzz"]), Err(LoraError::UnknownAdapter(n)) if n == "zzz"));
    m.delete_adapter("a").unwrap();
    assert_eq!(m.active_adapters(), ["b"]);
    assert!(max_abs_diff(m.model.forward(x), yb) < 1e-5);
}

#[test]
fn weighted_cat_is_exact_and_linear_matches_a_single_scaled_adapter() {
    let device = Device::default();
    let t = names(&["q_proj", "v_proj"]);
    let mut m =
        LoraModel::with_adapter(Tiny::new(&device), "a", LoraConfig::new(2, 4.0, t.clone()))
            .unwrap();
    m.add_adapter("b", LoraConfig::new(2, 2.0, t)).unwrap();
    train_b(&mut m, "a", &device);
    train_b(&mut m, "b", &device);
    m.add_weighted_adapter(&[("a", 0.7), ("b", -0.4)], "cat", Combination::Cat)
        .unwrap();
    assert_eq!(m.config("cat").unwrap().r, 4);
    let q = &m.model.q_proj;
    let expected = q.adapter("a").unwrap().delta_weight().mul_scalar(0.7)
        + q.adapter("b").unwrap().delta_weight().mul_scalar(-0.4);
    assert!(max_abs_diff(expected, q.adapter("cat").unwrap().delta_weight()) < 1e-6);

    m.add_weighted_adapter(&[("a", -0.5)], "half", Combination::Linear)
        .unwrap();
    let q = &m.model.q_proj;
    let expected = q.adapter("a").unwrap().delta_weight().mul_scalar(-0.5);
    assert!(max_abs_diff(expected, q.adapter("half").unwrap().delta_weight()) < 1e-6);

    m.add_adapter("r3", LoraConfig::new(3, 3.0, names(&["q_proj"])))
        .unwrap();
    assert!(matches!(
        m.add_weighted_adapter(&[("a", 1.0), ("r3", 1.0)], "bad", Combination::Linear),
        Err(LoraError::State(_))
    ));
}

#[test]
fn bad_targets_and_names_are_errors() {
    let device = Device::default();
    let err = LoraModel::with_adapter(
        Tiny::new(&device),
        "a",
        LoraConfig::new(2, 4.0, names(&["nope"])),
    )
    .unwrap_err();
    assert!(matches!(err, LoraError::NoTarget { .. }), "{err}");
    // A typo next to valid names: applied (as PEFT), but reported by name.
    let m = LoraModel::with_adapter(
        Tiny::new(&device),
        "a",
        LoraConfig::new(2, 4.0, names(&["q_proj", "v_prj"])),
    )
    .unwrap();
    assert_eq!(m.unmatched_target_modules("a"), ["v_prj".to_string()]);
    assert!(
        m.trainable_parameters_report()
            .contains("WARNING: adapter `a`: target_modules [\"v_prj\"]")
    );
    let mut c = LoraConfig::new(2, 4.0, names(&["q_proj"]));
    c.modules_to_save = Some(vec!["score".into()]);
    let err = LoraModel::with_adapter(Tiny::new(&device), "a", c).unwrap_err();
    assert!(matches!(err, LoraError::NoModuleToSave { module, .. } if module == "score"));
    let mut m = LoraModel::with_adapter(
        Tiny::new(&device),
        "a",
        LoraConfig::new(2, 4.0, names(&["q_proj"])),
    )
    .unwrap();
    assert!(matches!(
        m.add_adapter("a", LoraConfig::new(2, 4.0, names(&["q_proj"]))),
        Err(LoraError::DuplicateAdapter(_))
    ));
    let mut zero = LoraConfig::new(0, 4.0, names(&["q_proj"]));
    assert!(
        matches!(m.add_adapter("z", zero.clone()), Err(LoraError::Config { field, .. }) if field == "r")
    );
    zero.r = 2;
    zero.peft_type = "LOHA".into();
    assert!(
        matches!(m.add_adapter("z", zero), Err(LoraError::UnsupportedPeftType(t)) if t == "LOHA")
    );
    let _ = (Q, V);
}
