//! A corpus of malformed inputs, each built by code into a fresh temporary
//! directory from the valid synthetic model, and each with the one-line
//! error it must get: exit status 1 (not 0, not a panic's 101, not a
//! signal), one line on stderr starting with `mwtop: error: ` that names
//! what is wrong, nothing on stdout. Every run has a timeout and an
//! address-space limit, so a hang or a memory blow-up fails its case
//! instead of the machine. All cases run in one test that reports every
//! failure together.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::quantized::GgmlDType;
use mwtop::checkpoint::gguf::{self, GgufValue};
use mwtop::checkpoint::gguf_writer::{self, GgufTensorData};
use mwtop::synthetic::Spec;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
const ADDRESS_SPACE: u64 = 4 << 30;

type Meta = Vec<(String, GgufValue)>;
type Build = Box<dyn Fn(&Path) -> Vec<String>>;

struct Case {
    name: &'static str,
    /// What the error line must contain (case-insensitive).
    needles: &'static [&'static str],
    /// What it must not contain.
    absent: &'static [&'static str],
    build: Build,
}

fn case(
    name: &'static str,
    needles: &'static [&'static str],
    build: impl Fn(&Path) -> Vec<String> + 'static,
) -> Case {
    Case {
        name,
        needles,
        absent: &[],
        build: Box::new(build),
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Replaces whatever is at `path` with a FIFO.
fn fifo_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    mkfifo(path);
}

/// Replaces whatever is at `path` with a directory.
fn dir_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir(path).unwrap();
}

/// Replaces whatever is at `path` with a symlink loop (path -> x -> path).
fn loop_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    let other = path.with_extension("loop");
    std::os::unix::fs::symlink(&other, path).unwrap();
    std::os::unix::fs::symlink(path, &other).unwrap();
}

/// A sparse file of `len` bytes.
fn sparse_at(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} in the bytes", String::from_utf8_lossy(needle)))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// ---- GGUF -------------------------------------------------------------

/// The valid synthetic GGUF's bytes, written once per dtype.
fn base_gguf(dtype: GgmlDType) -> &'static [u8] {
    static F32: OnceLock<Vec<u8>> = OnceLock::new();
    static Q8_0: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = match dtype {
        GgmlDType::F32 => &F32,
        GgmlDType::Q8_0 => &Q8_0,
        other => panic!("no base GGUF of {other:?}"),
    };
    cell.get_or_init(|| {
        let dir = common::tempdir();
        let p = dir.path().join("base.gguf");
        Spec::default().write_gguf(&p, dtype).unwrap();
        std::fs::read(&p).unwrap()
    })
}

/// The valid synthetic GGUF's metadata and tensors (as stored).
fn gguf_parts(dtype: GgmlDType) -> (Meta, Vec<GgufTensorData>) {
    let bytes = base_gguf(dtype);
    let header = gguf::parse(Path::new("base.gguf"), bytes).unwrap();
    let tensors = gguf_writer::tensors_of(&header, bytes);
    (Spec::default().gguf_metadata(), tensors)
}

/// The synthetic GGUF's bytes, with metadata and tensors edited first.
fn gguf_bytes_with(
    dtype: GgmlDType,
    edit: impl FnOnce(&mut Meta, &mut Vec<GgufTensorData>),
) -> Vec<u8> {
    let (mut meta, mut tensors) = gguf_parts(dtype);
    edit(&mut meta, &mut tensors);
    gguf_writer::to_bytes(&meta, &tensors)
}

fn gguf_bytes() -> Vec<u8> {
    gguf_bytes_with(GgmlDType::F32, |_, _| {})
}

fn write_gguf(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `inspect` of the synthetic GGUF with its raw bytes patched.
fn gguf_patched(patch: impl Fn(&mut Vec<u8>) + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let mut b = gguf_bytes();
        patch(&mut b);
        vec!["inspect".into(), s(&write_gguf(dir, &b))]
    }
}

/// `inspect` of the synthetic GGUF with one metadata key set.
fn gguf_meta(key: &'static str, value: GgufValue) -> impl Fn(&Path) -> Vec<String> {
    gguf_edit(move |meta, _| set(meta, key, value.clone()))
}

/// `inspect` of the synthetic GGUF with metadata and tensors edited.
fn gguf_edit(
    edit: impl Fn(&mut Meta, &mut Vec<GgufTensorData>) + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let b = gguf_bytes_with(GgmlDType::F32, &edit);
        vec!["inspect".into(), s(&write_gguf(dir, &b))]
    }
}

fn set(meta: &mut Meta, key: &str, value: GgufValue) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => meta.push((key.to_string(), value)),
    }
}

/// Where a key's value (its type id) starts.
fn key_value(b: &[u8], key: &str) -> usize {
    find(b, key.as_bytes()) + key.len()
}

/// Where a tensor entry's n_dims field is.
fn tensor_entry(b: &[u8], name: &str) -> usize {
    // The entry's name, not the metadata: entries follow the metadata.
    let meta_end = key_value(b, "tokenizer.ggml.add_bos_token");
    meta_end + find(&b[meta_end..], name.as_bytes()) + name.len()
}

/// The offset field of a tensor entry with `n_dims` dims.
fn tensor_offset_field(b: &[u8], name: &str, n_dims: usize) -> usize {
    tensor_entry(b, name) + 4 + 8 * n_dims + 4
}

/// A generate run that loads every weight of the GGUF.
fn gguf_loaded(
    dtype: GgmlDType,
    edit: impl Fn(&mut Vec<GgufTensorData>) + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let b = gguf_bytes_with(dtype, |_, t| edit(t));
        let p = write_gguf(dir, &b);
        args(&["generate", &s(&p), "--prompt", "hi", "--max-tokens", "1"])
    }
}

fn tensor_mut<'a>(tensors: &'a mut [GgufTensorData], name: &str) -> &'a mut GgufTensorData {
    tensors
        .iter_mut()
        .find(|t| t.name == name)
        .expect("tensor exists")
}

fn set_f32(t: &mut GgufTensorData, i: usize, v: f32) {
    t.data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

// ---- Hugging Face directories ------------------------------------------

type Files = Vec<(std::ffi::OsString, Vec<u8>)>;

/// The files of the valid synthetic HF directory in `shards` files, written once.
fn base_hf(shards: usize) -> &'static Files {
    static ONE: OnceLock<Files> = OnceLock::new();
    static TWO: OnceLock<Files> = OnceLock::new();
    let cell = if shards == 1 { &ONE } else { &TWO };
    cell.get_or_init(|| {
        let dir = common::tempdir();
        Spec::default()
            .write_hf_dir_sharded(dir.path(), safetensors::Dtype::F32, shards)
            .unwrap();
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect()
    })
}

fn hf_dir(dir: &Path, shards: usize) -> PathBuf {
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    for (name, bytes) in base_hf(shards) {
        std::fs::write(m.join(name), bytes).unwrap();
    }
    m
}

fn hf(dir: &Path) -> PathBuf {
    hf_dir(dir, 1)
}

fn hf_sharded(dir: &Path) -> PathBuf {
    hf_dir(dir, 2)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `inspect` of the HF directory with config.json edited.
fn config(edit: impl Fn(&mut Value) + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        edit_json(&m.join("config.json"), &edit);
        vec!["inspect".into(), s(&m)]
    }
}

/// `inspect` of the HF directory after `f` changed it.
fn hf_with(f: impl Fn(&Path) + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        f(&m);
        vec!["inspect".into(), s(&m)]
    }
}

/// model.safetensors with its header rewritten by `edit` (data kept).
fn st_header(m: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = m.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_string(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

/// model.safetensors with raw bytes patched.
fn st_bytes(m: &Path, patch: impl FnOnce(&mut Vec<u8>)) {
    let p = m.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    patch(&mut b);
    std::fs::write(&p, b).unwrap();
}

/// model.safetensors rewritten with tensors added (F32 values).
fn st_add(m: &Path, name: &str, shape: Vec<usize>) {
    let p = m.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n: usize = shape.iter().product();
    let extra = vec![0u8; 4 * n];
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    views.push((
        name.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &extra).unwrap(),
    ));
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

/// Sets one f32 of a tensor in model.safetensors.
fn st_set_f32(m: &Path, tensor: &str, i: usize, v: f32) {
    st_bytes(m, |b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        let start = h[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
        let at = 8 + n + start + 4 * i;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    });
}

fn text(dir: &Path) -> PathBuf {
    let t = dir.join("t.txt");
    std::fs::write(&t, "some text to score, long enough for a few windows").unwrap();
    t
}

/// `eval` of the valid HF model over a text made by `make`.
fn eval_text(make: impl Fn(&Path) -> PathBuf + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let t = make(dir);
        args(&["eval", &s(&m), "--text", &s(&t)])
    }
}

/// `generate` of the valid HF model with extra arguments.
fn generate(extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let mut a = args(&["generate", &s(&m), "--prompt", "hi"]);
        a.extend(args(extra));
        a
    }
}

/// `eval` of the valid HF model with extra arguments.
fn eval(extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let t = text(dir);
        let mut a = args(&["eval", &s(&m), "--text", &s(&t)]);
        a.extend(args(extra));
        a
    }
}

/// Another subcommand of the valid HF model with extra arguments.
fn sub(cmd: &'static str, extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let mut a = args(&[cmd, &s(&m)]);
        a.extend(args(extra));
        a
    }
}

fn with_adapter(make: impl Fn(&Path) -> PathBuf + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let a = make(dir);
        args(&[
            "generate",
            &s(&m),
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
            "--adapter",
            &s(&a),
        ])
    }
}

fn cases() -> Vec<Case> {
    use GgufValue::*;
    let mut v = vec![
        // ---- GGUF header counts and lengths ----
        case(
            "gguf_tensor_count_huge",
            &["m.gguf", "tensor count claims 1152921504606846976"],
            gguf_patched(|b| put_u64(b, 8, 1 << 60)),
        ),
        case(
            "gguf_metadata_count_huge",
            &["m.gguf", "metadata count claims"],
            gguf_patched(|b| put_u64(b, 16, u64::MAX)),
        ),
        case(
            "gguf_key_length_huge",
            &["m.gguf", "string length", "runs past the end"],
            gguf_patched(|b| put_u64(b, 24, u64::MAX / 2)),
        ),
        case(
            "gguf_string_value_length_huge",
            &["general.architecture", "string length", "runs past the end"],
            gguf_patched(|b| {
                let at = key_value(b, "general.architecture") + 4;
                put_u64(b, at, 1 << 50)
            }),
        ),
        case(
            "gguf_token_array_length_huge",
            &["tokenizer.ggml.tokens", "claims 1099511627776 entries"],
            gguf_patched(|b| {
                let at = key_value(b, "tokenizer.ggml.tokens") + 8;
                put_u64(b, at, 1 << 40)
            }),
        ),
        case(
            "gguf_nested_array_length_huge",
            &["test.nested", "claims 1099511627776 entries"],
            |dir| {
                let mut b = gguf_bytes_with(GgmlDType::F32, |m, _| {
                    m.push(("test.nested".into(), Array(9, vec![Array(4, vec![U32(1)])])))
                });
                let at = key_value(&b, "test.nested") + 4 + 4 + 8 + 4;
                put_u64(&mut b, at, 1 << 40);
                vec!["inspect".into(), s(&write_gguf(dir, &b))]
            },
        ),
        case(
            "gguf_arrays_nested_too_deep",
            &["test.deep", "nested too deep"],
            gguf_meta(
                "test.deep",
                Array(
                    9,
                    vec![Array(
                        9,
                        vec![Array(9, vec![Array(9, vec![Array(4, vec![U32(1)])])])],
                    )],
                ),
            ),
        ),
        case(
            "gguf_unknown_value_type",
            &["general.name", "unknown metadata value type 13"],
            gguf_patched(|b| {
                let at = key_value(b, "general.name");
                put_u32(b, at, 13)
            }),
        ),
        case(
            "gguf_unknown_array_element_type",
            &["tokenizer.ggml.merges", "unknown array element type 99"],
            gguf_patched(|b| {
                let at = key_value(b, "tokenizer.ggml.merges") + 4;
                put_u32(b, at, 99)
            }),
        ),
        case(
            "gguf_truncated_in_the_metadata",
            &["m.gguf", "truncated"],
            gguf_patched(|b| b.truncate(300)),
        ),
        case(
            "gguf_truncated_in_the_data",
            &["m.gguf", "runs past the end"],
            gguf_patched(|b| {
                let n = b.len();
                b.truncate(n - 100)
            }),
        ),
        case(
            "gguf_n_dims_zero",
            &["output_norm.weight", "0 dimensions"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight");
                put_u32(b, at, 0)
            }),
        ),
        case(
            "gguf_n_dims_five",
            &["output_norm.weight", "5 dimensions"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight");
                put_u32(b, at, 5)
            }),
        ),
        case(
            "gguf_dimension_of_zero",
            &["output_norm.weight", "dimension of 0"],
            gguf_edit(|_, t| {
                let n = tensor_mut(t, "output_norm.weight");
                n.shape = vec![0];
                n.data.clear();
            }),
        ),
        case(
            "gguf_dims_product_overflows",
            &["token_embd.weight", "more elements than a file"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "token_embd.weight") + 4;
                put_u64(b, at, 1 << 40);
                put_u64(b, at + 8, 1 << 40);
            }),
        ),
        case(
            "gguf_dims_product_beyond_the_file",
            &["token_embd.weight", "more elements than a file"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "token_embd.weight") + 4;
                put_u64(b, at, 1 << 31);
                put_u64(b, at + 8, 1 << 31);
            }),
        ),
        case(
            "gguf_shape_not_whole_blocks",
            &["token_embd.weight", "not a whole number of Q8_0 blocks"],
            |dir| {
                let mut b = gguf_bytes_with(GgmlDType::Q8_0, |_, _| {});
                let at = tensor_entry(&b, "token_embd.weight") + 4;
                put_u64(&mut b, at, 255);
                vec!["inspect".into(), s(&write_gguf(dir, &b))]
            },
        ),
        case(
            "gguf_offset_unaligned",
            &["output_norm.weight", "not aligned to 32"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                let o = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                put_u64(b, at, o + 1)
            }),
        ),
        case(
            "gguf_offset_past_the_end",
            &["output_norm.weight", "runs past the end"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, 1 << 40)
            }),
        ),
        case(
            "gguf_offset_near_u64_max",
            &["output_norm.weight", "runs past the end"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, u64::MAX - 31)
            }),
        ),
        case(
            "gguf_tensors_overlap",
            &["m.gguf", "overlap"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, 0)
            }),
        ),
        case(
            "gguf_alignment_zero",
            &["general.alignment = 0", "power of two"],
            gguf_meta("general.alignment", U32(0)),
        ),
        case(
            "gguf_alignment_not_a_power_of_two",
            &["general.alignment = 3", "power of two"],
            gguf_meta("general.alignment", U32(3)),
        ),
        case(
            "gguf_alignment_a_string",
            &["general.alignment", "power of two"],
            gguf_meta("general.alignment", String("32".into())),
        ),
        case(
            "gguf_duplicate_tensor",
            &["output_norm.weight", "appears twice"],
            gguf_edit(|_, t| {
                let n = tensor_mut(t, "output_norm.weight");
                let copy = GgufTensorData {
                    name: n.name.clone(),
                    dtype: n.dtype,
                    shape: n.shape.clone(),
                    data: n.data.clone(),
                };
                t.push(copy);
            }),
        ),
        case(
            "gguf_duplicate_key",
            &["llama.block_count", "appears twice"],
            gguf_edit(|m, _| m.push(("llama.block_count".into(), U32(2)))),
        ),
        case(
            "gguf_block_count_a_string",
            &["llama.block_count must be a non-negative integer", "\"2\""],
            gguf_meta("llama.block_count", String("2".into())),
        ),
        case(
            "gguf_block_count_negative",
            &["llama.block_count must be a non-negative integer", "-2"],
            gguf_meta("llama.block_count", I32(-2)),
        ),
        case(
            "gguf_rope_base_a_string",
            &["llama.rope.freq_base must be a number"],
            gguf_meta("llama.rope.freq_base", String("1e4".into())),
        ),
        case(
            "gguf_architecture_missing",
            &["m.gguf", "general.architecture"],
            gguf_edit(|m, _| m.retain(|(k, _)| k != "general.architecture")),
        ),
        case(
            "gguf_architecture_not_a_string",
            &["general.architecture must be a string"],
            gguf_meta("general.architecture", U32(1)),
        ),
        case(
            "gguf_invalid_utf8_key",
            &["metadata key #1", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = find(b, b"general.name");
                b[at] = 0xff
            }),
        ),
        case(
            "gguf_invalid_utf8_value",
            &["general.name", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = find(b, b"mwtop synthetic");
                b[at + 1] = 0xc3;
                b[at + 2] = 0x28
            }),
        ),
        case(
            "gguf_invalid_utf8_tensor_name",
            &["tensor #", "name", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight") - "output_norm.weight".len();
                b[at] = 0xfe
            }),
        ),
        case(
            "gguf_unsupported_tensor_type",
            &["output_norm.weight", "GGML type id 16"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight") + 4 + 8;
                put_u32(b, at, 16)
            }),
        ),
        // ---- GGUF hyper-parameters ----
        case(
            "gguf_block_count_u32_max",
            &["4294967295 layers", "llama.block_count", "holds only"],
            gguf_meta("llama.block_count", U32(u32::MAX)),
        ),
        case(
            "gguf_block_count_1e8",
            &["100000000 layers", "llama.block_count", "holds only"],
            gguf_meta("llama.block_count", U32(100_000_000)),
        ),
        case(
            "gguf_block_count_one_fewer",
            &["1 layers", "llama.block_count", "blk.1."],
            gguf_meta("llama.block_count", U32(1)),
        ),
        case(
            "gguf_block_count_one_more",
            &["blk.2.", "lacks"],
            gguf_meta("llama.block_count", U32(3)),
        ),
        case(
            "gguf_embedding_length_zero",
            &["llama.embedding_length is 0"],
            gguf_meta("llama.embedding_length", U32(0)),
        ),
        case(
            "gguf_head_count_zero",
            &["llama.attention.head_count is 0"],
            gguf_meta("llama.attention.head_count", U32(0)),
        ),
        case(
            "gguf_head_count_not_dividing",
            &["llama.embedding_length 256 is not a multiple of llama.attention.head_count 3"],
            gguf_meta("llama.attention.head_count", U32(3)),
        ),
        case(
            "gguf_head_count_kv_not_dividing",
            &["llama.attention.head_count_kv", "not a multiple"],
            gguf_meta("llama.attention.head_count_kv", U32(3)),
        ),
        case(
            "gguf_head_count_kv_zero",
            &["llama.attention.head_count_kv is 0"],
            gguf_meta("llama.attention.head_count_kv", U32(0)),
        ),
        case(
            "gguf_key_length_odd",
            &["llama.attention.key_length", "must be even"],
            gguf_meta("llama.attention.key_length", U32(63)),
        ),
        case(
            "gguf_feed_forward_length_huge",
            &["d_ff 100000000000", "llama.feed_forward_length", "elements"],
            gguf_meta("llama.feed_forward_length", U64(100_000_000_000)),
        ),
        case(
            "gguf_context_length_zero",
            &["llama.context_length is 0"],
            gguf_meta("llama.context_length", U32(0)),
        ),
        case(
            "gguf_context_length_absurd",
            &["context 1099511627776", "llama.context_length"],
            gguf_meta("llama.context_length", U64(1 << 40)),
        ),
        case(
            "gguf_rope_base_nan",
            &["llama.rope.freq_base = NaN", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(f32::NAN)),
        ),
        case(
            "gguf_rope_base_negative",
            &["llama.rope.freq_base = -10000", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(-10000.0)),
        ),
        case(
            "gguf_rope_base_zero",
            &["llama.rope.freq_base = 0", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(0.0)),
        ),
        case(
            "gguf_rope_base_infinite",
            &["llama.rope.freq_base = inf", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F64(f64::INFINITY)),
        ),
        case(
            "gguf_epsilon_negative",
            &[
                "llama.attention.layer_norm_rms_epsilon = -0.00001",
                "epsilon",
            ],
            gguf_meta("llama.attention.layer_norm_rms_epsilon", F32(-1e-5)),
        ),
        case(
            "gguf_epsilon_nan",
            &["llama.attention.layer_norm_rms_epsilon = NaN", "epsilon"],
            gguf_meta("llama.attention.layer_norm_rms_epsilon", F32(f32::NAN)),
        ),
        case(
            "gguf_vocab_size_mismatch",
            &["token_embd.weight", "[300, 256]", "[259, 256]"],
            gguf_meta("llama.vocab_size", U32(300)),
        ),
        case(
            "gguf_unused_tensor",
            &["blk.0.extra.weight", "does not use"],
            gguf_edit(|_, t| {
                t.push(GgufTensorData {
                    name: "blk.0.extra.weight".into(),
                    dtype: GgmlDType::F32,
                    shape: vec![8],
                    data: vec![0; 32],
                })
            }),
        ),
        case(
            "gguf_missing_tensor",
            &["blk.1.ffn_down.weight", "lacks"],
            gguf_edit(|_, t| t.retain(|t| t.name != "blk.1.ffn_down.weight")),
        ),
        case(
            "gguf_bos_id_not_a_token_id",
            &["tokenizer.ggml.bos_token_id = 9999999999", "not a token id"],
            gguf_meta("tokenizer.ggml.bos_token_id", U64(9_999_999_999)),
        ),
        // ---- GGUF vocabulary ----
        case(
            "gguf_token_list_one_short",
            &["tokenizer.ggml.tokens lists 258 tokens", "259"],
            gguf_edit(|m, _| {
                if let Some((_, Array(_, items))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
                {
                    items.pop();
                }
            }),
        ),
        case(
            "gguf_tokens_not_strings",
            &["tokenizer.ggml.tokens must be a list of strings"],
            gguf_meta("tokenizer.ggml.tokens", Array(4, vec![U32(1); 259])),
        ),
        case(
            "gguf_scores_of_another_length",
            &["tokenizer.ggml.scores has 10 entries for 259 tokens"],
            gguf_meta("tokenizer.ggml.scores", Array(6, vec![F32(0.0); 10])),
        ),
        case(
            "gguf_token_types_of_another_length",
            &["tokenizer.ggml.token_type has 3 entries for 259 tokens"],
            gguf_meta("tokenizer.ggml.token_type", Array(5, vec![I32(1); 3])),
        ),
        case(
            "gguf_merge_without_a_space",
            &["tokenizer.ggml.merges[0]", "\"ab\""],
            gguf_meta("tokenizer.ggml.merges", Array(8, vec![String("ab".into())])),
        ),
        case(
            "gguf_merge_of_unknown_tokens",
            &["tokenizer.ggml.merges[0]", "\"abc xyz\"", "not two tokens"],
            gguf_meta(
                "tokenizer.ggml.merges",
                Array(8, vec![String("abc xyz".into()), String("a b".into())]),
            ),
        ),
        // Found by fuzzing: tokenizers' BPE builder panicked on a merge whose
        // result is longer than every token.
        case(
            "gguf_merge_making_a_token_outside_the_vocabulary",
            &[
                "tokenizer.ggml.merges[0]",
                "makes \"ab\"",
                "not in the vocabulary",
            ],
            gguf_meta(
                "tokenizer.ggml.merges",
                Array(8, vec![String("a b".into())]),
            ),
        ),
        case(
            "gguf_bos_outside_the_vocabulary",
            &[
                "tokenizer.ggml.bos_token_id = 9999",
                "outside the vocabulary",
            ],
            gguf_meta("tokenizer.ggml.bos_token_id", U32(9999)),
        ),
        // ---- weights ----
        case(
            "gguf_nan_in_a_norm_weight",
            &["output_norm.weight", "model.norm.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::F32, |t| {
                set_f32(tensor_mut(t, "output_norm.weight"), 3, f32::NAN)
            }),
        ),
        case(
            "gguf_inf_in_the_embedding",
            &["token_embd.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::F32, |t| {
                set_f32(tensor_mut(t, "token_embd.weight"), 5, f32::INFINITY)
            }),
        ),
        case(
            "gguf_nan_q8_0_scale",
            &["blk.0.attn_q.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::Q8_0, |t| {
                // A Q8_0 block: an f16 scale, then 32 int8 values.
                let q = tensor_mut(t, "blk.0.attn_q.weight");
                q.data[..2].copy_from_slice(&0x7e00u16.to_le_bytes());
            }),
        ),
        case(
            "safetensors_nan_in_a_norm_weight",
            &["model.norm.weight", "NaN or infinite"],
            |dir| {
                let m = hf(dir);
                st_set_f32(&m, "model.norm.weight", 0, f32::NAN);
                args(&["eval", &s(&m), "--text", &s(&text(dir))])
            },
        ),
        case(
            "safetensors_inf_in_down_proj",
            &["model.layers.1.mlp.down_proj.weight", "NaN or infinite"],
            |dir| {
                let m = hf(dir);
                st_set_f32(
                    &m,
                    "model.layers.1.mlp.down_proj.weight",
                    7,
                    f32::NEG_INFINITY,
                );
                args(&["generate", &s(&m), "--prompt", "hi", "--max-tokens", "1"])
            },
        ),
        // ---- safetensors directories ----
        case(
            "safetensors_header_length_huge",
            &[
                "model.safetensors",
                "not a valid safetensors file",
                "header length",
            ],
            hf_with(|m| st_bytes(m, |b| put_u64(b, 0, u64::MAX / 2))),
        ),
        case(
            "safetensors_header_beyond_the_file",
            &["model.safetensors", "header length", "runs past the end"],
            hf_with(|m| {
                st_bytes(m, |b| {
                    let n = b.len() as u64;
                    put_u64(b, 0, n)
                })
            }),
        ),
        case(
            "safetensors_header_not_json",
            &["model.safetensors", "not a JSON object"],
            hf_with(|m| st_bytes(m, |b| b[8] = b'[')),
        ),
        case(
            "safetensors_shape_product_overflows",
            &["model.norm.weight", "overflows"],
            hf_with(|m| {
                st_header(m, |h| {
                    h["model.norm.weight"]["shape"] = json!([1u64 << 62, 1u64 << 62])
                })
            }),
        ),
        case(
            "safetensors_size_mismatch",
            &["model.norm.weight", "needs 1020 bytes", "hold 1024"],
            hf_with(|m| st_header(m, |h| h["model.norm.weight"]["shape"] = json!([255]))),
        ),
        case(
            "safetensors_offsets_past_the_end",
            &["model.norm.weight", "run past the end of the data"],
            hf_with(|m| {
                st_header(m, |h| {
                    h["model.norm.weight"]["data_offsets"] =
                        json!([1u64 << 40, (1u64 << 40) + 1024])
                })
            }),
        ),
        case(
            "safetensors_negative_shape",
            &["model.norm.weight", "non-negative integers"],
            hf_with(|m| st_header(m, |h| h["model.norm.weight"]["shape"] = json!([-256]))),
        ),
        case(
            "safetensors_unused_tensor",
            &["model.layers.0.mlp.extra.weight", "does not use"],
            hf_with(|m| st_add(m, "model.layers.0.mlp.extra.weight", vec![4])),
        ),
        case(
            "safetensors_layer_past_the_count",
            &["2 layers", "model.layers.2.mlp.down_proj.weight"],
            hf_with(|m| st_add(m, "model.layers.2.mlp.down_proj.weight", vec![4])),
        ),
        case(
            "safetensors_bias_of_the_wrong_length",
            &["model.layers.0.self_attn.q_proj.bias", "256 rows"],
            hf_with(|m| st_add(m, "model.layers.0.self_attn.q_proj.bias", vec![3])),
        ),
        case(
            "safetensors_fifo",
            &["model.safetensors", "not a regular file (a FIFO)"],
            hf_with(|m| fifo_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_a_directory",
            &["model.safetensors", "not a regular file (a directory)"],
            hf_with(|m| dir_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_symlink_loop",
            &["model.safetensors", "symbolic links"],
            hf_with(|m| loop_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_empty",
            &["model.safetensors", "empty"],
            hf_with(|m| std::fs::write(m.join("model.safetensors"), b"").unwrap()),
        ),
        case(
            "config_fifo",
            &["config.json", "not a regular file (a FIFO)"],
            hf_with(|m| fifo_at(&m.join("config.json"))),
        ),
        case(
            "config_a_directory",
            &["config.json", "not a regular file (a directory)"],
            hf_with(|m| dir_at(&m.join("config.json"))),
        ),
        case(
            "config_symlink_loop",
            &["config.json", "symbolic links"],
            hf_with(|m| loop_at(&m.join("config.json"))),
        ),
        case(
            "config_huge_sparse",
            &["config.json", "more than the 64 MiB limit"],
            hf_with(|m| sparse_at(&m.join("config.json"), 1 << 30)),
        ),
        case(
            "config_invalid_json",
            &["config.json", "invalid JSON"],
            hf_with(|m| std::fs::write(m.join("config.json"), "{ not json").unwrap()),
        ),
        case(
            "config_not_an_object",
            &["config.json", "expected a JSON object"],
            hf_with(|m| std::fs::write(m.join("config.json"), "[1, 2]").unwrap()),
        ),
        case(
            "config_not_utf8",
            &["config.json", "not UTF-8"],
            hf_with(|m| std::fs::write(m.join("config.json"), b"{\"a\": \"\xff\"}").unwrap()),
        ),
        case(
            "config_layers_u32_max",
            &["4294967295 layers", "num_hidden_layers", "holds only"],
            config(|c| c["num_hidden_layers"] = json!(u32::MAX)),
        ),
        case(
            "config_layers_one_fewer",
            &["1 layers", "num_hidden_layers", "model.layers.1."],
            config(|c| c["num_hidden_layers"] = json!(1)),
        ),
        case(
            "config_layers_one_more",
            &["model.layers.2.", "lacks"],
            config(|c| c["num_hidden_layers"] = json!(3)),
        ),
        case(
            "config_layers_a_string",
            &["num_hidden_layers must be a non-negative integer"],
            config(|c| c["num_hidden_layers"] = json!("2")),
        ),
        case(
            "config_hidden_size_zero",
            &["config.json", "hidden_size is 0"],
            config(|c| c["hidden_size"] = json!(0)),
        ),
        case(
            "config_heads_zero",
            &["num_attention_heads is 0"],
            config(|c| c["num_attention_heads"] = json!(0)),
        ),
        case(
            "config_heads_not_dividing",
            &["hidden_size 256 is not a multiple of num_attention_heads 3"],
            config(|c| {
                c["num_attention_heads"] = json!(3);
                c.as_object_mut().unwrap().remove("head_dim");
            }),
        ),
        case(
            "config_kv_heads_not_dividing",
            &["num_key_value_heads", "not a multiple"],
            config(|c| c["num_key_value_heads"] = json!(3)),
        ),
        case(
            "config_context_zero",
            &["max_position_embeddings is 0"],
            config(|c| c["max_position_embeddings"] = json!(0)),
        ),
        case(
            "config_context_absurd",
            &["context 1099511627776", "max_position_embeddings"],
            config(|c| c["max_position_embeddings"] = json!(1u64 << 40)),
        ),
        case(
            "config_rope_theta_negative",
            &["rope_theta = -10000", "RoPE base"],
            config(|c| c["rope_theta"] = json!(-10000.0)),
        ),
        case(
            "config_rope_theta_zero",
            &["rope_theta = 0", "RoPE base"],
            config(|c| c["rope_theta"] = json!(0)),
        ),
        case(
            "config_rope_theta_nan_string",
            &["rope_theta must be a number", "NaN"],
            config(|c| c["rope_theta"] = json!("NaN")),
        ),
        case(
            "config_epsilon_negative",
            &["rms_norm_eps = -0.00001", "epsilon"],
            config(|c| c["rms_norm_eps"] = json!(-1e-5)),
        ),
        case(
            "config_epsilon_nan_string",
            &["rms_norm_eps must be a number"],
            config(|c| c["rms_norm_eps"] = json!("NaN")),
        ),
        case(
            "config_rope_scaling_factor_negative",
            &["rope_scaling.factor = -2"],
            config(|c| c["rope_scaling"] = json!({"rope_type": "linear", "factor": -2.0})),
        ),
        case(
            "config_vocab_mismatch",
            &["model.embed_tokens.weight", "[300, 256]", "[259, 256]"],
            config(|c| c["vocab_size"] = json!(300)),
        ),
        case(
            "config_d_ff_huge",
            &["d_ff 100000000000", "intermediate_size"],
            config(|c| c["intermediate_size"] = json!(100_000_000_000u64)),
        ),
        case(
            "index_names_a_missing_shard",
            &["model-00002-of-00002.safetensors", "no such file"],
            |dir| {
                let m = hf_sharded(dir);
                std::fs::remove_file(m.join("model-00002-of-00002.safetensors")).unwrap();
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_shard_escapes_the_directory",
            &[
                "model.safetensors.index.json",
                "\"../x.safetensors\"",
                "not a file in this directory",
            ],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.norm.weight"] = json!("../x.safetensors")
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_entry_in_the_wrong_shard",
            &[
                "weight_map puts model.embed_tokens.weight in model-00002-of-00002.safetensors",
                "does not hold it",
            ],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.embed_tokens.weight"] =
                        json!("model-00002-of-00002.safetensors")
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_invalid_json",
            &["model.safetensors.index.json", "invalid JSON"],
            |dir| {
                let m = hf_sharded(dir);
                std::fs::write(m.join("model.safetensors.index.json"), "{").unwrap();
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_entry_not_a_string",
            &["weight_map entry model.norm.weight is not a file name"],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.norm.weight"] = json!(7)
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_fifo",
            &["model.safetensors.index.json", "a FIFO"],
            |dir| {
                let m = hf_sharded(dir);
                fifo_at(&m.join("model.safetensors.index.json"));
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "tokenizer_json_invalid",
            &["tokenizer.json", "tokenizer"],
            |dir| {
                let m = hf(dir);
                std::fs::write(m.join("tokenizer.json"), "{ nope").unwrap();
                args(&["generate", &s(&m), "--prompt", "hi"])
            },
        ),
        case(
            "tokenizer_json_fifo",
            &["tokenizer.json", "a FIFO"],
            |dir| {
                let m = hf(dir);
                fifo_at(&m.join("tokenizer.json"));
                args(&["generate", &s(&m), "--prompt", "hi"])
            },
        ),
        // ---- paths ----
        case("path_missing", &["nothing-here", "no such file"], |dir| {
            args(&["inspect", &s(&dir.join("nothing-here"))])
        }),
        case("path_empty_model_id", &["the model \"\" is empty"], |_| {
            args(&["inspect", ""])
        }),
        case(
            "path_fifo_as_gguf",
            &["m.gguf", "not a regular file (a FIFO)"],
            |dir| {
                let p = dir.join("m.gguf");
                mkfifo(&p);
                args(&["inspect", &s(&p)])
            },
        ),
        case("path_symlink_loop", &["m.gguf", "symbolic links"], |dir| {
            let p = dir.join("m.gguf");
            loop_at(&p);
            args(&["inspect", &s(&p)])
        }),
        case(
            "path_character_device",
            &["/dev/null", "not a regular file (a character device)"],
            |_| args(&["inspect", "/dev/null"]),
        ),
        // ---- texts ----
        case(
            "text_dev_zero",
            &["/dev/zero", "not a regular file (a character device)"],
            eval_text(|_| PathBuf::from("/dev/zero")),
        ),
        case(
            "text_fifo",
            &["t.fifo", "not a regular file (a FIFO)"],
            eval_text(|d| {
                let p = d.join("t.fifo");
                mkfifo(&p);
                p
            }),
        ),
        case(
            "text_a_directory",
            &["not a regular file (a directory)"],
            eval_text(|d| d.to_path_buf()),
        ),
        case(
            "text_missing",
            &["t-missing.txt", "no such file"],
            eval_text(|d| d.join("t-missing.txt")),
        ),
        case(
            "text_over_the_limit",
            &["big.txt", "more than the 256 MiB limit for a text"],
            eval_text(|d| {
                let p = d.join("big.txt");
                sparse_at(&p, 300 << 20);
                p
            }),
        ),
        case(
            "text_not_utf8",
            &["bad.txt", "not UTF-8"],
            eval_text(|d| {
                let p = d.join("bad.txt");
                std::fs::write(&p, b"ok \xff\xfe").unwrap();
                p
            }),
        ),
        case(
            "check_text_dev_zero",
            &["/dev/zero", "not a regular file"],
            sub("check", &["--text", "/dev/zero"]),
        ),
        // ---- arguments ----
        case(
            "arg_top_p_2",
            &["--top-p must lie in (0, 1], got 2"],
            generate(&["--top-p", "2"]),
        ),
        case(
            "arg_top_p_0",
            &["--top-p must lie in (0, 1], got 0"],
            generate(&["--top-p", "0"]),
        ),
        case(
            "arg_top_p_nan",
            &["--top-p", "got NaN"],
            generate(&["--top-p", "NaN"]),
        ),
        case(
            "arg_top_p_negative",
            &["--top-p", "got -0.5"],
            generate(&["--top-p", "-0.5"]),
        ),
        case(
            "arg_temperature_nan",
            &["--temperature", "got NaN"],
            generate(&["--temperature", "NaN"]),
        ),
        case(
            "arg_temperature_negative_with_a_space",
            &["--temperature must be a finite number >= 0", "got -1"],
            generate(&["--temperature", "-1"]),
        ),
        case(
            "arg_temperature_negative_with_equals",
            &["--temperature must be a finite number >= 0", "got -1"],
            generate(&["--temperature=-1"]),
        ),
        case(
            "arg_temperature_inf",
            &["--temperature", "got inf"],
            generate(&["--temperature", "inf"]),
        ),
        case(
            "arg_max_tokens_beyond_the_context",
            &["--max-tokens 100000", "context of 4096"],
            generate(&["--max-tokens", "100000"]),
        ),
        case(
            "arg_max_tokens_zero",
            &["--max-tokens", "at least 1"],
            generate(&["--max-tokens", "0"]),
        ),
        case(
            "arg_max_tokens_negative",
            &["--max-tokens", "-5"],
            generate(&["--max-tokens", "-5"]),
        ),
        case(
            "arg_prompt_longer_than_the_context",
            &["the prompt has", "context holds"],
            |dir| {
                let m = hf(dir);
                let long = "a".repeat(4200);
                args(&["generate", &s(&m), "--prompt", &long])
            },
        ),
        case(
            "arg_k_zero",
            &["--k", "at least 1"],
            eval(&["--mode", "zero", "--k", "0"]),
        ),
        case(
            "arg_k_negative",
            &["--k", "-1"],
            eval(&["--mode", "zero", "--k", "-1"]),
        ),
        case(
            "arg_k_beyond_d_ff",
            &["--k 100000", "1..=512"],
            eval(&["--mode", "zero", "--layer", "0", "--k", "100000"]),
        ),
        case(
            "arg_layer_past_the_last",
            &["--layer 5", "layers 0..1"],
            eval(&["--mode", "zero", "--layer", "5"]),
        ),
        case(
            "arg_layer_negative",
            &["--layer", "-1"],
            eval(&["--mode", "zero", "--layer", "-1"]),
        ),
        case(
            "arg_dims_past_d_ff",
            &["--dims 9999", "d_ff 512"],
            eval(&["--mode", "zero", "--layer", "0", "--dims", "3,9999"]),
        ),
        case(
            "arg_dims_twice",
            &["--dims names 3 twice"],
            eval(&["--mode", "zero", "--layer", "0", "--dims", "3,3"]),
        ),
        case(
            "arg_edit_past_the_last_layer",
            &["--edit 9:0,0", "layers 0..1"],
            eval(&["--edit", "9:0,0=0"]),
        ),
        case(
            "arg_window_zero",
            &["--window", "not 0"],
            eval(&["--window", "0"]),
        ),
        case(
            "arg_window_one",
            &["--window", "not 1"],
            eval(&["--window", "1"]),
        ),
        case(
            "arg_stride_zero",
            &["--stride", "not 0"],
            eval(&["--window", "8", "--stride", "0"]),
        ),
        case(
            "arg_stride_the_window",
            &["--stride", "not 8"],
            eval(&["--window", "8", "--stride", "8"]),
        ),
        case(
            "arg_min_abs_nan",
            &["--min-abs", "finite"],
            eval(&["--min-abs", "NaN"]),
        ),
        case(
            "arg_min_ratio_negative",
            &["--min-ratio", "got -1"],
            eval(&["--min-ratio", "-1"]),
        ),
        case(
            "arg_scan_k_zero",
            &["--k", "at least 1"],
            sub("scan", &["--k", "0"]),
        ),
        case(
            "arg_check_max_ratio_nan",
            &["--max-ratio", "got NaN"],
            sub("check", &["--max-ratio", "NaN"]),
        ),
        case(
            "arg_check_max_ratio_negative",
            &["--max-ratio", "got -2"],
            sub("check", &["--max-ratio", "-2"]),
        ),
        case(
            "arg_tasks_limit_zero",
            &["--limit", "at least 1"],
            sub("tasks", &["--limit", "0"]),
        ),
        case(
            "arg_tasks_batch_tokens_zero",
            &["--batch-tokens", "at least 1"],
            sub("tasks", &["--batch-tokens", "0"]),
        ),
        case(
            "arg_finetune_lr_nan",
            &["--lr", "finite number > 0"],
            sub("finetune", &["--data", "x", "--out", "y", "--lr", "NaN"]),
        ),
        case(
            "arg_finetune_warmup_beyond_one",
            &["--warmup", "[0, 1]"],
            sub("finetune", &["--data", "x", "--out", "y", "--warmup", "2"]),
        ),
        case(
            "arg_finetune_p0_negative",
            &["--p0", "[0, 1]"],
            sub(
                "finetune",
                &["--data", "x", "--out", "y", "--macdrop", "--p0", "-0.5"],
            ),
        ),
        case(
            "arg_bench_decode_zero",
            &["--decode", "at least 1"],
            sub("bench", &["--decode", "0"]),
        ),
        case(
            "arg_device_unknown",
            &["--device", "tpu"],
            generate(&["--device", "tpu"]),
        ),
        case(
            "adapter_missing_directory",
            &[
                "--adapter",
                "no-adapter",
                "adapter_config.json",
                "no such file",
            ],
            with_adapter(|d| d.join("no-adapter")),
        ),
        case(
            "adapter_config_invalid_json",
            &["--adapter", "adapter_config.json", "invalid JSON"],
            with_adapter(|d| {
                let a = d.join("adapter");
                std::fs::create_dir(&a).unwrap();
                std::fs::write(a.join("adapter_config.json"), "{ nope").unwrap();
                a
            }),
        ),
        case(
            "adapter_config_fifo",
            &["adapter_config.json", "a FIFO"],
            with_adapter(|d| {
                let a = d.join("adapter");
                std::fs::create_dir(&a).unwrap();
                mkfifo(&a.join("adapter_config.json"));
                a
            }),
        ),
        case(
            "finetune_data_fifo",
            &["data.jsonl", "not a regular file (a FIFO)"],
            |dir| {
                let g = write_gguf(dir, &gguf_bytes());
                let data = dir.join("data.jsonl");
                mkfifo(&data);
                args(&[
                    "finetune",
                    &s(&g),
                    "--data",
                    &s(&data),
                    "--out",
                    &s(&dir.join("adapter")),
                    "--device",
                    "cpu",
                ])
            },
        ),
        case(
            "tasks_requests_fifo",
            &["requests.jsonl", "not a regular file (a FIFO)"],
            |dir| {
                let g = write_gguf(dir, &gguf_bytes());
                let requests = dir.join("requests.jsonl");
                mkfifo(&requests);
                args(&[
                    "tasks",
                    &s(&g),
                    "--requests",
                    &s(&requests),
                    "--device",
                    "cpu",
                ])
            },
        ),
    ];
    v.push(Case {
        name: "convert_into_a_path_under_a_file",
        needles: &["blocker/out", "cannot create the output directory"],
        absent: &["mwtop-tmp"],
        build: Box::new(|dir| {
            let g = write_gguf(dir, &gguf_bytes());
            let blocker = dir.join("blocker");
            std::fs::write(&blocker, "a file").unwrap();
            args(&["convert", &s(&g), &s(&blocker.join("out"))])
        }),
    });
    v.push(Case {
        name: "convert_into_an_unwritable_place",
        needles: &["/proc/mwtop-out", "cannot create the output directory"],
        absent: &["mwtop-tmp"],
        build: Box::new(|dir| {
            let g = write_gguf(dir, &gguf_bytes());
            args(&["convert", &s(&g), "/proc/mwtop-out"])
        }),
    });
    v
}

/// What is wrong with one case's run, if anything.
fn judge(c: &Case, run: &common::Bounded) -> Option<String> {
    let err = run.stderr.trim_end();
    let what = || {
        format!(
            "exit {:?}, signal {:?}, stderr {err:?}, stdout {:?}",
            run.code, run.signal, run.stdout
        )
    };
    if run.timed_out {
        return Some(format!("timed out after {TIMEOUT:?} ({})", what()));
    }
    if run.code != Some(1) {
        return Some(format!("expected exit status 1: {}", what()));
    }
    if err.lines().count() != 1 || !err.starts_with("mwtop: error: ") {
        return Some(format!(
            "expected one line starting with \"mwtop: error: \": {}",
            what()
        ));
    }
    if !run.stdout.is_empty() {
        return Some(format!("expected nothing on stdout: {}", what()));
    }
    let lower = err.to_lowercase();
    let missing: Vec<&str> = c
        .needles
        .iter()
        .copied()
        .filter(|n| !lower.contains(&n.to_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Some(format!("{err:?} lacks {missing:?}"));
    }
    if let Some(a) = c.absent.iter().find(|a| lower.contains(&a.to_lowercase())) {
        return Some(format!("{err:?} should not mention {a:?}"));
    }
    None
}

#[test]
fn every_malformed_input_gets_its_one_line_error() {
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "{} cases; the corpus needs at least 60",
        cases.len()
    );
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "two cases are named {}", c.name);
    }
    let only = std::env::var("MALFORMED_CASE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        let dir = common::tempdir();
        let a = (c.build)(dir.path());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let run = common::mwtop_bounded(&refs, TIMEOUT, ADDRESS_SPACE);
        ran += 1;
        if std::env::var_os("MALFORMED_VERBOSE").is_some() {
            eprintln!(
                "{} ({:.2}s): {}",
                c.name,
                t0.elapsed().as_secs_f64(),
                run.stderr.trim_end()
            );
        }
        if let Some(why) = judge(c, &run) {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The control: the unbroken inputs the cases start from are accepted.
#[test]
fn the_unbroken_inputs_are_accepted() {
    let dir = common::tempdir();
    let g = write_gguf(dir.path(), &gguf_bytes());
    let q = dir.path().join("q.gguf");
    std::fs::write(&q, gguf_bytes_with(GgmlDType::Q8_0, |_, _| {})).unwrap();
    let m = hf(dir.path());
    let sharded = hf_sharded(&dir.path().join("sharded"));
    let t = text(dir.path());
    let (g, q, m, sharded, t) = (s(&g), s(&q), s(&m), s(&sharded), s(&t));
    for a in [
        vec!["inspect", &g],
        vec!["inspect", &m],
        vec!["inspect", &sharded],
        vec!["generate", &q, "--prompt", "hi", "--max-tokens", "2"],
        vec![
            "generate",
            &m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
        ],
        vec!["eval", &m, "--text", &t, "--window", "8", "--stride", "7"],
        vec!["eval", &g, "--text", &t],
    ] {
        let run = common::mwtop_bounded(&a, TIMEOUT, ADDRESS_SPACE);
        assert_eq!(run.code, Some(0), "{a:?}: {}", run.stderr);
    }
}
