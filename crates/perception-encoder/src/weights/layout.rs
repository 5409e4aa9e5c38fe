//! The official key layout: every tensor a config implies, with its shape.
//!
//! This is the `state_dict()` of the reference `CLIP` class (text tower at the top level, vision
//! tower under `visual.`), or of `VisionTransformer` under `visual.` for vision-only models.

use crate::config::{ClipConfig, PoolType, TextConfig, VisionConfig};

/// `(key, shape)` for every tensor of the model, in the official layout, sorted by key.
///
/// ```
/// let cfg = perception_encoder::ClipConfig::preset("PE-Core-B16-224").unwrap();
/// let shapes = perception_encoder::weights::official_shapes(&cfg);
/// assert_eq!(shapes.len(), 457);
/// ```
pub fn official_shapes(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    vision_shapes(&cfg.vision, "visual.", &mut out);
    if let Some(text) = &cfg.text {
        text_shapes(text, &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The number of parameters of the model (sum over [`official_shapes`]).
pub fn num_parameters(cfg: &ClipConfig) -> usize {
    official_shapes(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

fn push(out: &mut Vec<(String, Vec<usize>)>, key: String, shape: &[usize]) {
    out.push((key, shape.to_vec()));
}

fn block_shapes(out: &mut Vec<(String, Vec<usize>)>, p: &str, w: usize, hidden: usize, layer_scale: bool) {
    push(out, format!("{p}attn.in_proj_weight"), &[3 * w, w]);
    push(out, format!("{p}attn.in_proj_bias"), &[3 * w]);
    push(out, format!("{p}attn.out_proj.weight"), &[w, w]);
    push(out, format!("{p}attn.out_proj.bias"), &[w]);
    for ln in ["ln_1", "ln_2"] {
        push(out, format!("{p}{ln}.weight"), &[w]);
        push(out, format!("{p}{ln}.bias"), &[w]);
    }
    push(out, format!("{p}mlp.c_fc.weight"), &[hidden, w]);
    push(out, format!("{p}mlp.c_fc.bias"), &[hidden]);
    push(out, format!("{p}mlp.c_proj.weight"), &[w, hidden]);
    push(out, format!("{p}mlp.c_proj.bias"), &[w]);
    if layer_scale {
        push(out, format!("{p}ls_1.gamma"), &[w]);
        push(out, format!("{p}ls_2.gamma"), &[w]);
    }
}

fn vision_shapes(v: &VisionConfig, p: &str, out: &mut Vec<(String, Vec<usize>)>) {
    let w = v.width;
    if v.use_cls_token {
        push(out, format!("{p}class_embedding"), &[w]);
    }
    if v.use_abs_posemb {
        push(out, format!("{p}positional_embedding"), &[v.num_positions(), w]);
    }
    push(out, format!("{p}conv1.weight"), &[w, 3, v.patch_size, v.patch_size]);
    if v.use_ln_pre {
        push(out, format!("{p}ln_pre.weight"), &[w]);
        push(out, format!("{p}ln_pre.bias"), &[w]);
    }
    for i in 0..v.layers {
        block_shapes(out, &format!("{p}transformer.resblocks.{i}."), w, v.mlp_hidden(), v.ls_init_value.is_some());
    }
    if v.use_ln_post {
        push(out, format!("{p}ln_post.weight"), &[w]);
        push(out, format!("{p}ln_post.bias"), &[w]);
    }
    if v.pool_type == PoolType::Attn {
        let a = format!("{p}attn_pool.");
        push(out, format!("{a}probe"), &[1, 1, w]);
        push(out, format!("{a}attn.in_proj_weight"), &[3 * w, w]);
        push(out, format!("{a}attn.in_proj_bias"), &[3 * w]);
        push(out, format!("{a}attn.out_proj.weight"), &[w, w]);
        push(out, format!("{a}attn.out_proj.bias"), &[w]);
        push(out, format!("{a}layernorm.weight"), &[w]);
        push(out, format!("{a}layernorm.bias"), &[w]);
        push(out, format!("{a}mlp.c_fc.weight"), &[4 * w, w]);
        push(out, format!("{a}mlp.c_fc.bias"), &[4 * w]);
        push(out, format!("{a}mlp.c_proj.weight"), &[w, 4 * w]);
        push(out, format!("{a}mlp.c_proj.bias"), &[w]);
    }
    if let Some(d) = v.output_dim {
        push(out, format!("{p}proj"), &[w, d]);
    }
}

fn text_shapes(t: &TextConfig, out: &mut Vec<(String, Vec<usize>)>) {
    let w = t.width;
    push(out, "token_embedding.weight".into(), &[t.vocab_size, w]);
    push(out, "positional_embedding".into(), &[t.context_length, w]);
    for i in 0..t.layers {
        block_shapes(out, &format!("transformer.resblocks.{i}."), w, t.mlp_hidden(), false);
    }
    push(out, "ln_final.weight".into(), &[w]);
    push(out, "ln_final.bias".into(), &[w]);
    push(out, "text_projection".into(), &[w, t.output_dim]);
    push(out, "logit_scale".into(), &[]);
}
