//! Figures and the HTML report: `mwtop plot` writes a PNG whose pixels at
//! the planted massive cell have the palette's colour for its value (and
//! turn dark under the attack), an SVG that parses, a sweep chart; `mwtop
//! report` writes one page that names no address. Bad output names are
//! refused before the model loads.

mod common;

use mwtop::analysis::massive;
use mwtop::analysis::states::probe_states;
use mwtop::analysis::target::DEFAULT_PROBE;
use mwtop::model::intervention::Interventions;
use mwtop::palette;
use mwtop::synthetic::Spec;

fn planted(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("planted");
    Spec::planted()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    path
}

/// Decodes a PNG: (width, height, RGB bytes).
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixel(img: &(u32, u32, Vec<u8>), x: i32, y: i32) -> (u8, u8, u8) {
    let i = (y as usize * img.0 as usize + x as usize) * 3;
    (img.2[i], img.2[i + 1], img.2[i + 2])
}

#[test]
fn a_png_of_the_layers_shows_the_massive_cell_and_its_collapse() {
    let dir = common::tempdir();
    let model_dir = planted(dir.path());
    let out = dir.path().join("layers.png");
    let run = common::mwtop(&[
        "plot",
        common::path_str(&model_dir),
        "--what",
        "layers",
        "--mode",
        "zero",
        "--out",
        common::path_str(&out),
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("mwtop-tmp")),
        "no temporary file is left: {names:?}"
    );
    let img = decode(&out);

    // The same states, computed here: original and zeroed (rows 300, 17 of layer 1).
    let ckpt = mwtop::checkpoint::Checkpoint::open_path(&model_dir).unwrap();
    let model = mwtop::model::Model::load(
        &ckpt,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        |_, _| {},
    )
    .unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let ids = tok.encode(DEFAULT_PROBE, false).unwrap().get_ids().to_vec();
    let (probe, _) = massive::probe_tokens(&model, &ids);
    let attack = mwtop::analysis::attack::Attack::new(
        mwtop::analysis::attack::AttackMode::Zero,
        1,
        &[300, 17],
        2,
        model.config().d_ff,
        0,
    );
    let st = probe_states(
        &model,
        &probe,
        &[Interventions::none(), attack.interventions()],
        1,
    )
    .unwrap();
    let scan = massive::scan(&model, &tok, &probe, "bos", 8, Default::default()).unwrap();
    let fig = mwtop::export::views::heatmaps(
        mwtop::export::views::View::Layers,
        "planted",
        &scan,
        &st,
        Some("zero"),
        &[],
    );
    assert_eq!(
        (img.0, img.1),
        fig.pixels(),
        "three panels and two colour bars"
    );
    assert_eq!(fig.panels.len(), 3);

    // A pixel of data cell (layer 2, hidden dim 42) in each panel: its
    // column's first pixel (256 dims over more pixels: one column each),
    // its row's middle.
    let centre = |panel: usize, row: usize, col: usize| {
        let (x, y, w, h) = fig.plot_rect(panel);
        assert!(w >= 256, "one pixel column per dim at least");
        (x + col as i32 * w / 256, y + (2 * row as i32 + 1) * h / 6)
    };
    let median = st[0].layer_medians[2];
    let original = st[0].resid_max[2][42];
    assert!(original / median > 100.0, "the planted massive activation");
    let (x, y) = centre(0, 2, 42);
    assert_eq!(pixel(&img, x, y), palette::magnitude(original, median));
    let zeroed = st[1].resid_max[2][42];
    assert!(zeroed < original / 10.0, "{zeroed} vs {original}");
    let (x, y) = centre(1, 2, 42);
    assert_eq!(pixel(&img, x, y), palette::magnitude(zeroed, median));
    let (x, y) = centre(2, 2, 42);
    let change = palette::log_change(zeroed, original, 1e-3 * median);
    assert_eq!(pixel(&img, x, y), palette::change(change));
    let (r, _, b) = pixel(&img, x, y);
    assert!(b > r, "a fall is blue");
}

#[test]
fn an_svg_parses_and_the_sweep_draws_every_mode() {
    let dir = common::tempdir();
    let model_dir = planted(dir.path());
    let m = common::path_str(&model_dir);
    let svg = dir.path().join("dff.svg");
    let run = common::mwtop(&["plot", m, "--what", "dff", "--out", common::path_str(&svg)]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let rects = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect")
        .count();
    assert!(rects > 500, "cells are drawn: {rects} rects");
    let texts: String = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(texts.contains("layer 1: d_ff state per token"), "{texts}");
    assert!(
        texts.contains("▲300"),
        "the massive d_ff dim is marked: {texts}"
    );
    assert!(texts.contains("d_ff dim"), "{texts}");

    let sweep = dir.path().join("sweep.svg");
    let run = common::mwtop(&[
        "plot",
        m,
        "--what",
        "sweep",
        "--out",
        common::path_str(&sweep),
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let text = std::fs::read_to_string(&sweep).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    assert!(
        labels.iter().filter(|l| l.parse::<f64>().is_ok()).count() >= 8,
        "both axes have ticks: {labels:?}"
    );
    for mode in ["zero", "keep", "random-zero", "random-keep", "original"] {
        assert!(labels.contains(&mode), "{mode} in the legend: {labels:?}");
    }
}

#[test]
fn the_report_is_one_page_that_names_no_address() {
    let dir = common::tempdir();
    let model_dir = planted(dir.path());
    let out = dir.path().join("report.html");
    let run = common::mwtop(&[
        "report",
        common::path_str(&model_dir),
        "--out",
        common::path_str(&out),
        "--max-tokens",
        "6",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let html = std::fs::read_to_string(&out).unwrap();
    for external in [
        "http:", "https:", "src=", "href=", "url(", "@import", "<script", "<link",
    ] {
        assert!(!html.contains(external), "the page names {external}");
    }
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "two heatmaps and the sweep inline"
    );
    for part in [
        "<h2>The model</h2>",
        "<h2>Massive activations</h2>",
        "<h2>Massive weights</h2>",
        "<h2>Under attack</h2>",
        "Generations from",
        "<td>300</td>",
        "down_proj.weight[",
        "random-keep",
    ] {
        assert!(html.contains(part), "{part} missing");
    }
    assert!(html.starts_with("<!DOCTYPE html>"));
}

#[test]
fn a_figure_name_without_png_or_svg_is_refused_before_loading() {
    let dir = common::tempdir();
    let out = common::mwtop(&[
        "plot",
        "/nonexistent/model",
        "--out",
        common::path_str(&dir.path().join("fig.jpg")),
    ]);
    common::assert_one_line_error(&out, &["fig.jpg", ".png or .svg"]);
}

/// A model without massive activations still gets its report: it says so
/// and attacks the fallback layer.
#[test]
fn a_model_without_massive_activations_gets_a_report_that_says_so() {
    let dir = common::tempdir();
    let path = dir.path().join("plain");
    Spec::default()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    let out = dir.path().join("plain.html");
    let run = common::mwtop(&[
        "report",
        common::path_str(&path),
        "--out",
        common::path_str(&out),
        "--max-tokens",
        "4",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("No massive activation"), "the report says so");
    assert_eq!(html.matches("<svg").count(), 3);
}
