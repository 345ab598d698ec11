//! Whole-screen snapshots of the TUI (ratatui's TestBackend + insta), driven
//! by key events against the real engine on the planted synthetic checkpoint,
//! waiting for its results.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::DType;
use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use mwtop::engine::{EngineHandle, Event};
use mwtop::tui::app::{App, Shown, View};
use mwtop::tui::heatmap::{self, Geometry};
use mwtop::tui::ui;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;

#[path = "common/harness.rs"]
mod harness;
use harness::Harness;

/// Reading the drawn heatmap back.
trait Pixels {
    fn pixel(
        &mut self,
        row: usize,
        col: usize,
        rows: &[Vec<f32>],
        reference: &[f32],
    ) -> (Color, f32);
}

impl Pixels for Harness {
    /// The colour drawn for data (row, col) of the heatmap, and the
    /// largest |x| / reference of that pixel's bin in `rows`.
    fn pixel(
        &mut self,
        row: usize,
        col: usize,
        rows: &[Vec<f32>],
        reference: &[f32],
    ) -> (Color, f32) {
        let buf = self.cells(80, 24);
        let area = self.app.heatmap_area.unwrap();
        let g = Geometry::new(area, rows.len(), rows[0].len()).unwrap();
        let (x, p) = (g.cell_of(col), g.pixel_of(row));
        let cell = &buf[(area.x + x as u16, area.y + (p / 2) as u16)];
        let colour = if p % 2 == 0 { cell.fg } else { cell.bg };
        let mut best = 0f32;
        for r in g.rows_of(p) {
            for c in g.cols_of(x) {
                best = best.max(rows[r][c].abs() / reference[r]);
            }
        }
        (colour, best)
    }
}

#[test]
fn screens_through_a_session() {
    let mut h = Harness::new();
    assert!(h.app.error.is_none(), "{:?}", h.app.error);
    assert_eq!(h.app.probe.as_ref().unwrap().report.massive_layer, Some(1));
    insta::assert_snapshot!("start_80x24", h.screen(80, 24));
    let original = h.app.generated.clone();
    assert_eq!(original[0], original[1], "no attack: both columns agree");

    h.key(KeyCode::Char('z'));
    insta::assert_snapshot!("zero_80x24", h.screen(80, 24));
    let (o, zero) = h.app.perplexity;
    // The synthetic model is untrained: the attack changes perplexity, in no promised direction.
    assert!(
        (zero.unwrap() / o.unwrap() - 1.0).abs() > 0.01,
        "the attack shows: {zero:?} vs {o:?}"
    );
    assert_eq!(
        h.app.generated[0], original[0],
        "the original column is unchanged"
    );

    h.key(KeyCode::Char('r'));
    insta::assert_snapshot!("keep_80x24", h.screen(80, 24));

    h.key(KeyCode::Char('+'));
    assert_eq!(h.app.attack().unwrap().k, 4);
    h.key(KeyCode::Char('-'));
    h.key(KeyCode::Char('-'));
    h.key(KeyCode::Char('-'));
    assert_eq!(h.app.attack().unwrap().k, 0);
    h.key(KeyCode::Char('x'));
    assert_eq!(
        h.app.attack().unwrap().mode,
        mwtop::analysis::attack::AttackMode::RandomKeep
    );
    h.key(KeyCode::Char('o'));
    assert!(h.app.attack().is_none());

    h.key(KeyCode::Tab);
    assert_eq!(h.app.view, View::Tokens);
    insta::assert_snapshot!("tokens_view_80x24", h.screen(80, 24));
    h.key(KeyCode::Tab);
    assert_eq!(h.app.view, View::Ffn);
    // Pick the planted d_ff dim under the cursor (the top-ranked one) with space, zero it.
    assert_eq!(h.app.ffn_dim, 300);
    h.key(KeyCode::Char(' '));
    h.key(KeyCode::Char('z'));
    let a = h.app.attack().unwrap();
    assert_eq!((a.layer, a.dims.clone()), (1, vec![300]));
    insta::assert_snapshot!("ffn_view_custom_zero_120x40", h.screen(120, 40));

    h.key(KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", h.screen(80, 24));
    h.key(KeyCode::Esc);
    assert!(!h.app.show_help);

    insta::assert_snapshot!("wide_200x60", h.screen(200, 60));
}

/// The heatmap reacts to attacks: after z the planted massive cell (layer
/// 2, hidden dim 42) goes dark in the attacked picture, c shows the
/// original again (bright) and then the change (the diverging palette's
/// blue end); every cell of the plot is painted, none in default colours.
#[test]
fn heatmap_colours_follow_the_attack() {
    let mut h = Harness::new();
    h.key(KeyCode::Down);
    h.key(KeyCode::Down);
    h.key(KeyCode::Left);
    assert_eq!(h.app.layer, 2);
    let (left, right) = {
        let s = &h.app.states.as_ref().unwrap().sides;
        (s[0].clone(), s[1].clone())
    };
    let reference = left.layer_medians.clone();
    let (original, bright) = h.pixel(2, 42, &left.resid_max, &reference);
    assert!(
        bright > 100.0,
        "the planted massive activation: {bright}x median"
    );
    assert_eq!(original, heatmap::color(bright, 1.0));
    assert_eq!(h.app.shown, Shown::Original);

    h.key(KeyCode::Char('z'));
    assert_eq!(
        h.app.shown,
        Shown::Attacked,
        "a toggle shows the attacked model"
    );
    let s = &h.app.states.as_ref().unwrap().sides;
    let (before, after) = (s[0].resid_max.clone(), s[1].resid_max.clone());
    assert_eq!(before, left.resid_max, "the left panel is the original");
    assert_eq!(right.resid_max, left.resid_max, "no attack before z");
    let (attacked, dim) = h.pixel(2, 42, &after, &reference);
    assert!(dim < bright / 10.0, "zeroing removes it: {dim} vs {bright}");
    assert_eq!(attacked, heatmap::color(dim, 1.0));
    assert_ne!(attacked, original);
    let title = h.screen(80, 24);
    assert!(title.contains("· attacked"), "{title}");

    h.key(KeyCode::Char('c'));
    assert_eq!(h.app.shown, Shown::Change);
    let buf = h.cells(80, 24);
    let area = h.app.heatmap_area.unwrap();
    let g = Geometry::new(area, 3, 256).unwrap();
    let (x, p) = (g.cell_of(42), g.pixel_of(2));
    let cell = &buf[(area.x + x as u16, area.y + (p / 2) as u16)];
    let Color::Rgb(r, _, b) = (if p % 2 == 0 { cell.fg } else { cell.bg }) else {
        panic!("an RGB colour")
    };
    assert!(b > r + 50, "a fall is blue: {r} vs {b}");
    for y in area.y..area.y + area.height {
        for x in area.x..area.x + area.width {
            let c = &buf[(x, y)];
            assert!(
                c.fg != Color::Reset && c.bg != Color::Reset,
                "cell ({x},{y}) unpainted"
            );
        }
    }
    insta::assert_snapshot!("change_80x24", h.screen(80, 24));

    h.key(KeyCode::Char('c'));
    assert_eq!(h.app.shown, Shown::Original);
    assert_eq!(h.pixel(2, 42, &before, &reference).0, original);

    // s saves the view as a figure: three panels under the zero attack.
    let dir = common::tempdir();
    let path = h.app.save_figure(dir.path()).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mwtop-planted-layers-zero-") && name.ends_with(".png"),
        "{name}"
    );
    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (3 * 560 + 2 * 150, 564));
}

/// The tour: seven captioned steps on the planted model, each setting the
/// view and the attack; space goes on, ← back, the last step or Esc ends it.
#[test]
fn the_tour_tells_the_planted_story_step_by_step() {
    use mwtop::analysis::attack::AttackMode;
    let mut h = Harness::new();
    h.key(KeyCode::Char('T'));
    let t = h.app.tour.as_ref().expect("T starts the tour");
    assert_eq!(t.steps.len(), 7, "six steps and the super weight");
    let caption = t.step().caption.clone();
    assert!(
        caption.contains("Hidden dim 42") && caption.contains("at layer 1"),
        "{caption}"
    );
    assert_eq!((h.app.view, h.app.layer, h.app.dim), (View::Layers, 1, 42));
    let screen = h.screen(80, 24);
    assert!(
        screen.contains("tour 1/7: The massive activation"),
        "{screen}"
    );

    h.key(KeyCode::Char(' '));
    assert_eq!((h.app.view, h.app.ffn_dim), (View::Ffn, 300));
    let caption = h.app.tour.as_ref().unwrap().step().caption.clone();
    assert!(
        caption.contains("dim 300") && caption.contains("dim 17"),
        "{caption}"
    );
    h.key(KeyCode::Char(' '));
    h.key(KeyCode::Char(' '));
    let a = h.app.attack().expect("step 4 zeroes");
    assert_eq!((a.mode, a.dims.clone()), (AttackMode::Zero, vec![300, 17]));
    assert_eq!(h.app.shown, Shown::Attacked);
    insta::assert_snapshot!("tour_zero_80x24", h.screen(80, 24));
    h.key(KeyCode::Left);
    assert!(
        h.app.attack().is_none(),
        "back to the massive weights, unattacked"
    );
    h.key(KeyCode::Char(' '));
    h.key(KeyCode::Char(' '));
    assert_eq!(h.app.attack().unwrap().mode, AttackMode::Keep);
    h.key(KeyCode::Char(' '));
    assert_eq!(h.app.attack().unwrap().mode, AttackMode::RandomZero);
    h.key(KeyCode::Char(' '));
    assert_eq!(h.app.attack().unwrap().mode, AttackMode::Super);
    h.key(KeyCode::Char(' '));
    assert!(h.app.tour.is_none(), "the last step ends the tour");
    assert!(h.app.status.contains("tour over"));
    h.key(KeyCode::Char('T'));
    assert!(h.app.tour.is_some());
    h.key(KeyCode::Esc);
    assert!(h.app.tour.is_none(), "Esc ends it");
}

#[test]
fn cursor_mouse_prompt_and_resizes() {
    let mut h = Harness::new();
    h.screen(80, 24);
    let layer = h.app.layer;
    h.key(KeyCode::Down);
    assert_eq!(h.app.layer, layer + 1);
    h.key(KeyCode::Char('k'));
    assert_eq!(h.app.layer, layer);
    // A click on the heatmap's first cell selects layer 0, dim 0.
    let area = h.app.heatmap_area.unwrap();
    h.app.on_terminal_event(TermEvent::Mouse(MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: area.x,
        row: area.y,
        modifiers: KeyModifiers::NONE,
    }));
    h.settle();
    assert_eq!((h.app.layer, h.app.dim), (0, 0));
    // Edit the prompt: e, type, Enter regenerates.
    h.key(KeyCode::Char('e'));
    assert!(h.app.editing);
    for c in "!!".chars() {
        h.app
            .on_terminal_event(TermEvent::Key(KeyEvent::from(KeyCode::Char(c))));
    }
    h.key(KeyCode::Enter);
    assert_eq!(h.app.prompt, "Hi!!");
    assert!(!h.app.editing);
    // Esc cancels an edit: the prompt is what it was.
    h.key(KeyCode::Char('e'));
    for code in [KeyCode::Backspace, KeyCode::Char('?'), KeyCode::Char('x')] {
        h.app
            .on_terminal_event(TermEvent::Key(KeyEvent::from(code)));
    }
    assert_eq!(h.app.prompt, "Hi!?x");
    h.app
        .on_terminal_event(TermEvent::Key(KeyEvent::from(KeyCode::Esc)));
    assert!(!h.app.editing);
    assert_eq!(h.app.prompt, "Hi!!", "Esc restores the prompt");
    // Any size down to 1x1 draws without a panic.
    for (w, hgt) in [
        (1, 1),
        (2, 1),
        (10, 3),
        (19, 5),
        (20, 6),
        (33, 9),
        (80, 24),
        (300, 100),
    ] {
        h.screen(w, hgt);
    }
    h.key(KeyCode::Char('L'));
    assert!(h.app.show_log);
    h.screen(80, 24);
    h.key(KeyCode::Char('q'));
    assert!(h.app.quit);
}

#[test]
fn load_failure_shows_an_error_screen() {
    let dir = common::tempdir();
    let (tx, rx) = mpsc::channel();
    let engine = EngineHandle::spawn(move |e| drop(tx.send(e)), String::new());
    let mut app = App::new(Box::new(move |job| engine.submit(job)), "Hi");
    app.start(
        Some(dir.path().to_str().unwrap().to_string()),
        Some("cpu".to_string()),
        DType::F32,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.error.is_none() {
        assert!(Instant::now() < deadline);
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            app.on_engine_event(e);
        }
    }
    let mut t = Terminal::new(TestBackend::new(80, 12)).unwrap();
    t.draw(|f| ui::draw(f, &mut app)).unwrap();
    let screen = t.backend().to_string();
    assert!(
        screen.contains("mwtop could not load the model"),
        "{screen}"
    );
    assert!(screen.contains("no config.json"), "{screen}");
    app.on_terminal_event(TermEvent::Key(KeyEvent::from(KeyCode::Char('q'))));
    assert!(app.quit);
}

/// The accuracy titles: a gauge while the task runs, then each side's acc;
/// events of an older toggle are ignored.
#[test]
fn accuracy_shows_a_gauge_then_both_sides() {
    let mut h = Harness::new();
    h.key(KeyCode::Char('z'));
    h.app.accuracy_on = true;
    let epoch = h.app.epoch();
    let task = h.app.task_name().to_string();
    assert_eq!(task, "arc_easy");
    h.app.on_engine_event(Event::AccuracyProgress {
        epoch,
        task: task.clone(),
        done: 3,
        total: 8,
    });
    let screen = h.screen(160, 40);
    assert!(screen.contains("arc_easy ███░░░░░ 3/8"), "{screen}");
    h.app.on_engine_event(Event::Accuracy {
        epoch: epoch.wrapping_sub(1),
        task: task.clone(),
        original: 0.25,
        attacked: 0.25,
    });
    assert_eq!(h.app.accuracy, (None, None), "a stale toggle's result");
    h.app.on_engine_event(Event::Accuracy {
        epoch,
        task,
        original: 0.5233,
        attacked: 0.3789,
    });
    let screen = h.screen(160, 40);
    assert!(screen.contains("· arc_easy 52.3%"), "{screen}");
    assert!(screen.contains("· arc_easy 37.9%"), "{screen}");
}

/// A random adapter (A and B non-zero) of the planted model, written in
/// PEFT's format under `name` beside it.
fn write_adapter(model_dir: &std::path::Path, name: &str, seed: u64) -> std::path::PathBuf {
    use mwtop::model::lora::Lora;
    let ckpt = mwtop::checkpoint::Checkpoint::open_path(model_dir).unwrap();
    let model =
        mwtop::model::Model::load(&ckpt, &candle_core::Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let lora = Lora::init(&model, &mwtop::checkpoint::Proj::ALL, 2, 4.0, seed).unwrap();
    let mut rng = mwtop::rng::SplitMix64::new(seed);
    for (_, pair) in lora.pairs() {
        let n = pair.b.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_f64() * 0.4 - 0.2) as f32)
            .collect();
        pair.b
            .set(
                &candle_core::Tensor::from_vec(v, pair.b.shape(), &candle_core::Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
    }
    let out = model_dir.parent().unwrap().join(name);
    mwtop::train::adapter_file(&lora, None)
        .unwrap()
        .write(&out)
        .unwrap();
    out
}

/// `mwtop MODEL --adapter A`: the base model beside the adapter, both
/// under the same attack; one model on both panels is original beside
/// attacked again; each panel's title names its model.
#[test]
fn adapters_are_shown_beside_the_base_model() {
    let plain = Harness::new();
    let base_ppl = plain.app.perplexity.0.unwrap();
    let mut h = Harness::with_adapters(|m| vec![write_adapter(m, "tuned", 3)]);
    assert!(h.app.error.is_none(), "{:?}", h.app.error);
    assert_eq!(h.app.models, [None, Some(0)]);
    let screen = h.screen(120, 30);
    assert!(screen.contains("base · original"), "{screen}");
    assert!(screen.contains("tuned · original"), "{screen}");
    let (left, right) = h.app.perplexity;
    assert!(
        (left.unwrap() - base_ppl).abs() < 1e-6 * base_ppl,
        "the base row is the base model"
    );
    assert!(
        (right.unwrap() / left.unwrap() - 1.0).abs() > 1e-3,
        "the adapter shows: {left:?} {right:?}"
    );

    h.key(KeyCode::Char('z'));
    let screen = h.screen(120, 30);
    assert!(screen.contains("base · zero"), "{screen}");
    assert!(screen.contains("tuned · zero"), "{screen}");
    let (base_zero, tuned_zero) = h.app.perplexity;
    assert!(
        (base_zero.unwrap() - base_ppl).abs() > 1e-3 * base_ppl,
        "both sides are attacked"
    );

    h.key(KeyCode::Char('M'));
    assert_eq!(h.app.models, [Some(0), Some(0)]);
    let screen = h.screen(120, 30);
    assert!(screen.contains("tuned · original"), "{screen}");
    assert!(screen.contains("tuned · zero"), "{screen}");
    // The same numbers as before, up to the last bits a batch of other
    // rows can change (the models themselves differ by more than 1e-3).
    let same = |a: Option<f64>, b: Option<f64>| (a.unwrap() / b.unwrap() - 1.0).abs() < 1e-7;
    assert!(same(h.app.perplexity.1, tuned_zero));
    assert!(
        same(h.app.perplexity.0, right),
        "the adapter's own original: {:?} vs {right:?}",
        h.app.perplexity.0
    );

    h.key(KeyCode::Char('m'));
    assert_eq!(h.app.models, [Some(0), None]);
    assert!(same(h.app.perplexity.0, tuned_zero) && same(h.app.perplexity.1, base_zero));
}

/// `w` zeroes the super weight alone: the title names it, the massive
/// weights panel marks it, and the attacked perplexity moves.
#[test]
fn the_super_weight_key_zeroes_one_scalar() {
    let mut h = Harness::new();
    let original = h.app.perplexity.0.unwrap();
    h.key(KeyCode::Char('w'));
    let attack = h.app.attack().unwrap();
    assert_eq!(attack.mode, mwtop::analysis::attack::AttackMode::Super);
    assert_eq!((attack.edits[0].row, attack.edits[0].col), (42, 300));
    let screen = h.screen(120, 30);
    assert!(screen.contains("super weight L1 [42,300]"), "{screen}");
    assert!(screen.contains("✗ super w [42,300]"), "{screen}");
    let zeroed = h.app.perplexity.1.unwrap();
    assert!(
        (zeroed / original - 1.0).abs() > 1e-3,
        "{zeroed} vs {original}"
    );
    assert_eq!(h.app.perplexity.0, Some(original));
}

/// `t` makes the cursor's layer the attack layer, ranked by its own d_ff
/// state at position 0; `t` on it again goes back to the massive layer.
#[test]
fn any_layer_can_be_attacked() {
    let mut h = Harness::new();
    assert_eq!(h.app.probe.as_ref().unwrap().attack_layer, 1);
    while h.app.layer > 0 {
        h.key(KeyCode::Up);
    }
    h.key(KeyCode::Char('t'));
    h.key(KeyCode::Char('z'));
    let a = h.app.attack().unwrap();
    assert_eq!(a.layer, 0);
    let state = &h.app.probe.as_ref().unwrap().mlp_pos0[0];
    let top = (0..state.len())
        .max_by(|&i, &j| state[i].abs().total_cmp(&state[j].abs()))
        .unwrap();
    assert_eq!(a.dims[0], top, "layer 0's own most massive d_ff dim");
    let screen = h.screen(120, 30);
    assert!(screen.contains("zero k=2 L0"), "{screen}");
    h.key(KeyCode::Char('t'));
    assert_eq!(h.app.attack().unwrap().layer, 1);
}
