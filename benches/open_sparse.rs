//! Open + inspect must not touch tensor data: a 70B-shaped safetensors
//! checkpoint (Llama-2-70B shapes, bf16, 15 shards, ~138 GB apparent) made of
//! sparse files costs a few MB on disk; `mwtop inspect --json` on it is timed
//! and its peak resident memory read from the kernel (getrusage of the child).
//!
//! Run: cargo bench --bench open_sparse

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const LAYERS: usize = 80;
const D: usize = 8192;
const FF: usize = 28672;
const HEADS: usize = 64;
const KV: usize = 8;
const VOCAB: usize = 32000;
const SHARDS: usize = 15;

fn tensors() -> Vec<(String, Vec<usize>)> {
    let hd = D / HEADS;
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, D]),
        ("model.norm.weight".to_string(), vec![D]),
        ("lm_head.weight".to_string(), vec![VOCAB, D]),
    ];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![HEADS * hd, D]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![KV * hd, D]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![KV * hd, D]));
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![D, HEADS * hd]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![FF, D]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![FF, D]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![D, FF]));
        t.push((format!("{p}.input_layernorm.weight"), vec![D]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![D]));
    }
    t
}

/// Writes header + a hole of the right size: the data is never written.
fn write_sparse_shard(path: &Path, tensors: &[(String, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut f = File::create(path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let total = 8 + text.len() as u64 + offset as u64;
    f.set_len(total).unwrap();
    total
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let all = tensors();
    let per = all.len().div_ceil(SHARDS);
    let mut weight_map = serde_json::Map::new();
    let mut apparent = 0u64;
    for (i, chunk) in all.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{SHARDS:05}.safetensors", i + 1);
        for (name, _) in chunk {
            weight_map.insert(name.clone(), file.clone().into());
        }
        apparent += write_sparse_shard(&dir.path().join(&file), chunk);
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": D,
        "intermediate_size": FF, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "max_position_embeddings": 4096,
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            use std::os::unix::fs::MetadataExt;
            e.unwrap().metadata().unwrap().blocks() * 512
        })
        .sum();

    let bin = env!("CARGO_BIN_EXE_mwtop");
    let mut times = Vec::new();
    let mut peak_kb = 0i64;
    for _ in 0..7 {
        let start = Instant::now();
        let out = Command::new(bin)
            .args(["inspect", "--json"])
            .arg(dir.path())
            .output()
            .unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["tensors"].as_array().unwrap().len(), all.len());
        peak_kb = peak_kb.max(children_max_rss_kb());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let params: usize = all.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    println!(
        "70B-shaped sparse checkpoint: {} tensors in {SHARDS} shards, {:.1}B parameters",
        all.len(),
        params as f64 / 1e9
    );
    println!(
        "  apparent size {:.1} GB, on disk {:.1} MB",
        apparent as f64 / 1e9,
        on_disk as f64 / 1e6
    );
    println!(
        "  mwtop inspect --json (process start to exit): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
    println!(
        "  peak resident memory of the mwtop process: {:.1} MB",
        peak_kb as f64 / 1024.0
    );
    println!(
        "  goals: < 100 ms, < 64 MB -> {}",
        if times[times.len() / 2] < 100.0 && peak_kb < 64 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// ru_maxrss of the largest waited-for child so far (kilobytes on Linux).
fn children_max_rss_kb() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}
