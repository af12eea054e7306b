//! Training with burn's AdamW: only adapters move, the base stays bit-identical and gets no gradient.
#![allow(clippy::unwrap_used)]
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use kiln_lora::{LoraConfig, LoraModel, TargetModules};

use crate::fake::{Tiny, host, input};
use crate::model::train_b;

#[test]
fn adamw_step_moves_only_adapters_and_keeps_no_base_gradient() {
    let device = Device::default().autodiff();
    let c = LoraConfig::new(
        2,
        4.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    let mut m = LoraModel::with_adapter(Tiny::new(&device), "default", c).unwrap();
    train_b(&mut m, "default", &device);
    let before_w = host(m.model.q_proj.dense_weight());
    let before_bias = host(m.model.q_proj.bias.as_ref().unwrap().val());
    let before_head = host(m.model.lm_head.dense_weight());
    let before_embed = host(m.model.embed.values(kiln_lora::Layout::Table));
    let before_a = host(m.model.q_proj.adapter("default").unwrap().lora_a.val());

    let loss = m.model.forward(input(&device)).square().mean();
    let grads = loss.backward();
    assert!(
        m.model
            .q_proj
            .weight
            .as_dense()
            .and_then(|w| w.grad(&grads))
            .is_none(),
        "no gradient for the frozen base"
    );
    assert!(
        m.model
            .lm_head
            .weight
            .as_dense()
            .and_then(|w| w.grad(&grads))
            .is_none()
    );
    assert!(
        m.model
            .q_proj
            .adapter("default")
            .unwrap()
            .lora_a
            .grad(&grads)
            .is_some()
    );
    let grads = GradientsParams::from_grads(grads, &m);
    assert_eq!(grads.len(), 4, "A and B of two layers");

    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let m = optim.step(1e-3, m, grads);
    assert_eq!(before_w, host(m.model.q_proj.dense_weight()));
    assert_eq!(
        before_bias,
        host(m.model.q_proj.bias.as_ref().unwrap().val())
    );
    assert_eq!(before_head, host(m.model.lm_head.dense_weight()));
    assert_eq!(
        before_embed,
        host(m.model.embed.values(kiln_lora::Layout::Table))
    );
    assert_ne!(
        before_a,
        host(m.model.q_proj.adapter("default").unwrap().lora_a.val())
    );
}
