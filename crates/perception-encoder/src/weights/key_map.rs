//! Key layouts: bring any supported checkpoint to the official key names.
//!
//! Only this module knows the open_clip / timm names (`shared/fixtures/timm_key_map.md`):
//! `visual.trunk.*` for the vision tower, `text.*` for the text tower, the attention-pool qkv
//! split into `q` and `kv`, and the projection stored transposed as `head.weight` with a zero
//! `head.bias`.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::{Entry, RawTensor};

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// The reference's `state_dict()` names (`visual.conv1.weight`, ...), possibly nested,
    /// `module.`-prefixed or vision-only without `visual.`.
    Official,
    /// open_clip's `CustomTextCLIP` over a timm `Eva` trunk, or a bare timm vision tower.
    OpenClip,
}

pub(crate) struct Mapped {
    pub entries: BTreeMap<String, Entry>,
    pub layout: CheckpointLayout,
    /// Stored keys that have no official counterpart.
    pub unmapped: Vec<String>,
    /// `head.bias` of an open_clip checkpoint, which must be zero: the reference has no bias.
    pub head_bias: Option<RawTensor>,
}

pub(crate) fn to_official(raw: Vec<(String, RawTensor)>) -> Mapped {
    // The reference removes every occurrence of "module." (DataParallel / DDP prefixes).
    let raw: Vec<(String, RawTensor)> = raw.into_iter().map(|(k, t)| (k.replace("module.", ""), t)).collect();
    let is_openclip = raw.iter().any(|(k, _)| {
        k.starts_with("visual.trunk.")
            || k.starts_with("trunk.")
            || k.starts_with("text.")
            || k == "patch_embed.proj.weight"
            || k.starts_with("blocks.")
    });
    if is_openclip {
        return from_openclip(raw);
    }
    let vision_only_file =
        !raw.iter().any(|(k, _)| k.starts_with("visual.")) && raw.iter().any(|(k, _)| k == "conv1.weight");
    let entries = raw
        .into_iter()
        .map(|(k, t)| (if vision_only_file { format!("visual.{k}") } else { k }, Entry::Raw(t)))
        .collect();
    Mapped { entries, layout: CheckpointLayout::Official, unmapped: Vec::new(), head_bias: None }
}

fn from_openclip(raw: Vec<(String, RawTensor)>) -> Mapped {
    let mut entries = BTreeMap::new();
    let mut unmapped = Vec::new();
    let mut head_bias = None;
    let (mut q_w, mut kv_w, mut q_b, mut kv_b) = (None, None, None, None);
    for (key, t) in raw {
        if let Some(rest) = key.strip_prefix("text.") {
            // Text tower and its projection only gain the `text.` prefix.
            entries.insert(rest.to_string(), Entry::Raw(t));
            continue;
        }
        if key == "logit_scale" {
            entries.insert(key, Entry::Raw(t));
            continue;
        }
        let v = key.strip_prefix("visual.trunk.").or_else(|| key.strip_prefix("trunk.")).unwrap_or(&key);
        let official = match v {
            "cls_token" => {
                let w = t.numel();
                entries.insert("visual.class_embedding".into(), Entry::Reshaped(t, vec![w]));
                continue;
            }
            "pos_embed" => {
                let shape = t.shape.iter().copied().skip_while(|&d| d == 1).collect::<Vec<_>>();
                let shape = if shape.len() == 2 { shape } else { t.shape[t.shape.len().saturating_sub(2)..].to_vec() };
                entries.insert("visual.positional_embedding".into(), Entry::Reshaped(t, shape));
                continue;
            }
            "head.weight" => {
                entries.insert("visual.proj".into(), Entry::Transposed(t));
                continue;
            }
            "head.bias" => {
                head_bias = Some(t);
                continue;
            }
            "attn_pool.q.weight" => {
                q_w = Some(t);
                continue;
            }
            "attn_pool.kv.weight" => {
                kv_w = Some(t);
                continue;
            }
            "attn_pool.q.bias" => {
                q_b = Some(t);
                continue;
            }
            "attn_pool.kv.bias" => {
                kv_b = Some(t);
                continue;
            }
            "patch_embed.proj.weight" => Some("conv1.weight".to_string()),
            "attn_pool.latent" => Some("attn_pool.probe".to_string()),
            _ => map_vision_name(v),
        };
        match official {
            Some(name) => {
                entries.insert(format!("visual.{name}"), Entry::Raw(t));
            }
            None => unmapped.push(key),
        }
    }
    for (q, kv, name) in [(q_w, kv_w, "weight"), (q_b, kv_b, "bias")] {
        match (q, kv) {
            (Some(q), Some(kv)) => {
                entries.insert(format!("visual.attn_pool.attn.in_proj_{name}"), Entry::RowConcat(vec![q, kv]));
            }
            (Some(_), None) => unmapped.push(format!("attn_pool.q.{name} (without attn_pool.kv.{name})")),
            (None, Some(_)) => unmapped.push(format!("attn_pool.kv.{name} (without attn_pool.q.{name})")),
            (None, None) => {}
        }
    }
    Mapped { entries, layout: CheckpointLayout::OpenClip, unmapped, head_bias }
}

/// Rename a timm `Eva` vision key (without `trunk.`) to the official name (without `visual.`).
fn map_vision_name(v: &str) -> Option<String> {
    let simple = [
        ("norm_pre.", "ln_pre."),
        ("norm.", "ln_post."),
        ("attn_pool.proj.", "attn_pool.attn.out_proj."),
        ("attn_pool.norm.", "attn_pool.layernorm."),
        ("attn_pool.mlp.fc1.", "attn_pool.mlp.c_fc."),
        ("attn_pool.mlp.fc2.", "attn_pool.mlp.c_proj."),
    ];
    for (from, to) in simple {
        if let Some(rest) = v.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = v.strip_prefix("blocks.")?;
    let (idx, sub) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let sub = match sub {
        "norm1.weight" => "ln_1.weight",
        "norm1.bias" => "ln_1.bias",
        "norm2.weight" => "ln_2.weight",
        "norm2.bias" => "ln_2.bias",
        "attn.qkv.weight" => "attn.in_proj_weight",
        "attn.qkv.bias" => "attn.in_proj_bias",
        "attn.proj.weight" => "attn.out_proj.weight",
        "attn.proj.bias" => "attn.out_proj.bias",
        "mlp.fc1.weight" => "mlp.c_fc.weight",
        "mlp.fc1.bias" => "mlp.c_fc.bias",
        "mlp.fc2.weight" => "mlp.c_proj.weight",
        "mlp.fc2.bias" => "mlp.c_proj.bias",
        "gamma_1" => "ls_1.gamma",
        "gamma_2" => "ls_2.gamma",
        _ => return None,
    };
    Some(format!("transformer.resblocks.{idx}.{sub}"))
}

/// The open_clip name(s) of an official tensor, with the tensor in that layout. The inverse of
/// [`to_official`]: the attention-pool qkv splits into `q` and `kv`, `proj` becomes a transposed
/// `head.weight` plus a zero `head.bias`.
pub(crate) fn to_openclip(key: &str, t: Tensor) -> candle_core::Result<Vec<(String, Tensor)>> {
    let Some(v) = key.strip_prefix("visual.") else {
        let name = if key == "logit_scale" { key.to_string() } else { format!("text.{key}") };
        return Ok(vec![(name, t)]);
    };
    let trunk = |name: &str| format!("visual.trunk.{name}");
    Ok(match v {
        "class_embedding" => {
            let w = t.dim(0)?;
            vec![(trunk("cls_token"), t.reshape((1, 1, w))?)]
        }
        "positional_embedding" => vec![(trunk("pos_embed"), t.unsqueeze(0)?)],
        "conv1.weight" => vec![(trunk("patch_embed.proj.weight"), t)],
        "attn_pool.probe" => vec![(trunk("attn_pool.latent"), t)],
        "proj" => {
            let d = t.dim(1)?;
            let bias = Tensor::zeros(d, t.dtype(), t.device())?;
            vec![(trunk("head.weight"), t.t()?.contiguous()?), (trunk("head.bias"), bias)]
        }
        "attn_pool.attn.in_proj_weight" | "attn_pool.attn.in_proj_bias" => {
            let w = t.dim(0)? / 3;
            let leaf = if v.ends_with("weight") { "weight" } else { "bias" };
            vec![
                (trunk(&format!("attn_pool.q.{leaf}")), t.narrow(0, 0, w)?.contiguous()?),
                (trunk(&format!("attn_pool.kv.{leaf}")), t.narrow(0, w, 2 * w)?.contiguous()?),
            ]
        }
        _ => vec![(trunk(&openclip_vision_name(v)), t)],
    })
}

/// Official vision name (without `visual.`) -> timm name (without `trunk.`).
fn openclip_vision_name(v: &str) -> String {
    let simple = [
        ("ln_pre.", "norm_pre."),
        ("ln_post.", "norm."),
        ("attn_pool.attn.out_proj.", "attn_pool.proj."),
        ("attn_pool.layernorm.", "attn_pool.norm."),
        ("attn_pool.mlp.c_fc.", "attn_pool.mlp.fc1."),
        ("attn_pool.mlp.c_proj.", "attn_pool.mlp.fc2."),
    ];
    for (from, to) in simple {
        if let Some(rest) = v.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    if let Some((idx, sub)) = v.strip_prefix("transformer.resblocks.").and_then(|r| r.split_once('.')) {
        let sub = match sub {
            "ln_1.weight" => "norm1.weight",
            "ln_1.bias" => "norm1.bias",
            "ln_2.weight" => "norm2.weight",
            "ln_2.bias" => "norm2.bias",
            "attn.in_proj_weight" => "attn.qkv.weight",
            "attn.in_proj_bias" => "attn.qkv.bias",
            "attn.out_proj.weight" => "attn.proj.weight",
            "attn.out_proj.bias" => "attn.proj.bias",
            "mlp.c_fc.weight" => "mlp.fc1.weight",
            "mlp.c_fc.bias" => "mlp.fc1.bias",
            "mlp.c_proj.weight" => "mlp.fc2.weight",
            "mlp.c_proj.bias" => "mlp.fc2.bias",
            "ls_1.gamma" => "gamma_1",
            "ls_2.gamma" => "gamma_2",
            other => other,
        };
        return format!("blocks.{idx}.{sub}");
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::map_vision_name;

    #[test]
    fn timm_names() {
        assert_eq!(
            map_vision_name("blocks.11.attn.qkv.bias").as_deref(),
            Some("transformer.resblocks.11.attn.in_proj_bias")
        );
        assert_eq!(map_vision_name("norm.weight").as_deref(), Some("ln_post.weight"));
        assert_eq!(map_vision_name("blocks.x.norm1.weight"), None);
        assert_eq!(map_vision_name("rope.freqs"), None);
    }
}
