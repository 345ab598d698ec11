//! Drawing: every component reads the app state, nothing else.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Shown, View};
use super::heatmap::{self, Heatmap};
use super::keys::BINDINGS;
use crate::analysis::attack::AttackMode;
use crate::display::format_ppl;
use crate::engine::{LayerDetail, ProbeStates};

const DIM: Style = Style::new().fg(Color::DarkGray);
const ACCENT: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);

pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    if area.width < 20 || area.height < 6 {
        frame.render_widget(
            Paragraph::new("mwtop: enlarge the terminal").style(ACCENT),
            area,
        );
        return;
    }
    if let Some(err) = &app.error {
        draw_error(frame, area, err);
        return;
    }
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(6),
            Constraint::Length(1),
            Constraint::Length(((area.height as usize).saturating_sub(10) / 2).clamp(4, 16) as u16),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .split(area);
    draw_title(frame, rows[0], app);
    let main = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([
            Constraint::Min(20),
            Constraint::Length((area.width / 3).clamp(24, 48)),
        ])
        .split(rows[1]);
    draw_heatmap(frame, main[0], app);
    draw_weights(frame, main[1], app);
    draw_readout(frame, rows[2], app);
    if app.show_log {
        let log = tui_logger::TuiLoggerWidget::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" log (L hides) "),
            )
            .style(Style::default());
        frame.render_widget(log, rows[3]);
    } else {
        draw_generation(frame, rows[3], app);
    }
    draw_prompt(frame, rows[4], app);
    draw_footer(frame, rows[5]);
    if let Some(t) = &app.tour {
        draw_tour(frame, rows[3], t);
    }
    if app.show_help {
        draw_help(frame, area);
    }
}

fn draw_error(frame: &mut Frame, area: Rect, err: &str) {
    let text = vec![
        Line::styled("mwtop could not load the model", ACCENT),
        Line::raw(""),
        Line::raw(err.to_string()),
        Line::raw(""),
        Line::styled(
            "What to do: check the path (a Hugging Face directory, a .gguf file or a hub id);",
            DIM,
        ),
        Line::styled(
            "`mwtop inspect MODEL` shows what is wrong in detail; without a model argument",
            DIM,
        ),
        Line::styled(
            "mwtop opens the demo model (Python 3 with pip fetches it once).",
            DIM,
        ),
        Line::raw(""),
        Line::raw("q quits"),
    ];
    let p = Paragraph::new(text)
        .wrap(Wrap { trim: false })
        .block(Block::default().borders(Borders::ALL).title(" error "));
    frame.render_widget(p, area);
}

fn attack_label(app: &App) -> String {
    match app.attack() {
        None => "original".into(),
        Some(a) if a.mode == AttackMode::Super => match a.edits.first() {
            Some(e) => format!("super weight L{} [{},{}]", a.layer, e.row, e.col),
            None => "super weight".into(),
        },
        Some(a) => {
            let dims: Vec<String> = a.dims.iter().take(4).map(usize::to_string).collect();
            let more = if a.dims.len() > 4 { ",…" } else { "" };
            let custom = if app.custom.is_empty() { "" } else { " custom" };
            format!(
                "{} k={} L{} [{}{more}]{custom}",
                a.mode,
                a.k,
                a.layer,
                dims.join(",")
            )
        }
    }
}

fn draw_title(frame: &mut Frame, area: Rect, app: &App) {
    let mut spans = vec![Span::styled(" mwtop ", ACCENT)];
    match &app.info {
        Some(i) => spans.push(Span::raw(format!(
            "{} · {} {}L d{} ff{} · {} {} ",
            i.name,
            i.config.architecture.name(),
            i.config.n_layers,
            i.config.d_model,
            i.config.d_ff,
            i.device,
            i.dtype
        ))),
        None => spans.push(Span::raw(format!("{} ", app.status))),
    }
    spans.push(Span::styled(
        format!("│ {} ", attack_label(app)),
        Style::new().fg(Color::Cyan),
    ));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn median(values: impl Iterator<Item = f32>) -> f32 {
    let mut v: Vec<f32> = values.map(f32::abs).collect();
    if v.is_empty() {
        return 1.0;
    }
    let mid = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// What the heatmap draws: rows of values, the reference each row is
/// divided by, the scale, and the axes' labels.
struct Picture {
    rows: Vec<Vec<f32>>,
    reference: Vec<f32>,
    scale: heatmap::Scale,
    cursor: (usize, usize),
    /// One per data row: a layer number or a token's text.
    row_labels: Vec<String>,
    /// Columns marked under the axis (the massive dims).
    marks: Vec<usize>,
    /// What the columns are.
    col_name: &'static str,
}

/// The pair's sides as the heatmap's sources: the left panel's states
/// (falling back to the scan's, the base model unattacked, while the
/// pair's are on their way) and the right panel's.
fn sides(app: &App) -> (Option<&ProbeStates>, Option<&ProbeStates>) {
    match &app.states {
        Some(s) => (Some(&s.sides[0]), Some(&s.sides[1])),
        None => (None, None),
    }
}

fn picture(app: &App, shown: Shown) -> Result<Picture, String> {
    let probe = app.probe.as_ref().ok_or_else(|| app.status.clone())?;
    let (left, right) = sides(app);
    let waiting = || "computing the attacked model's states ...".to_string();
    let massive_dims = || {
        let mut dims: Vec<usize> = Vec::new();
        for a in &probe.report.massive_activations {
            if !dims.contains(&a.dim) && dims.len() < 4 {
                dims.push(a.dim);
            }
        }
        dims
    };
    // (original rows, attacked rows, reference), per view.
    let (original, attacked, reference, row_labels, marks, col_name, cursor) = match app.view {
        View::Layers => {
            let (original, reference) = match left {
                Some(l) => (&l.resid_max, l.layer_medians.clone()),
                None => (
                    &probe.resid_max,
                    probe.report.layers.iter().map(|l| l.median).collect(),
                ),
            };
            let labels = (0..original.len()).map(|i| i.to_string()).collect();
            (
                original,
                right.map(|r| &r.resid_max),
                reference,
                labels,
                massive_dims(),
                "dim",
                (app.layer, app.dim),
            )
        }
        View::Tokens | View::Ffn => {
            fn pair_detail(s: Option<&ProbeStates>, layer: usize) -> Option<&LayerDetail> {
                s.map(|s| &s.detail).filter(|d| d.layer == layer)
            }
            let left_detail = pair_detail(left, app.layer).or_else(|| {
                app.detail
                    .as_ref()
                    .filter(|d| d.layer == app.layer && app.models[0].is_none())
            });
            let Some(ld) = left_detail else {
                return Err(format!("reading layer {} ...", app.layer));
            };
            let rd = pair_detail(right, app.layer);
            let labels = (0..ld.resid.len())
                .map(|t| {
                    probe
                        .report
                        .token_texts
                        .get(t)
                        .map(|s| sanitize(s).replace('\n', "⏎"))
                        .unwrap_or_default()
                })
                .collect();
            if app.view == View::Tokens {
                let m = ld.median;
                (
                    &ld.resid,
                    rd.map(|d| &d.resid),
                    vec![m; ld.resid.len()],
                    labels,
                    massive_dims(),
                    "dim",
                    (app.token, app.dim),
                )
            } else {
                let m = median(ld.mlp.iter().flatten().copied());
                let marks = match app.attack() {
                    Some(a) if a.layer == app.layer && a.mode != AttackMode::Super => {
                        a.dims.iter().take(4).copied().collect()
                    }
                    _ if app.layer == probe.attack_layer => probe
                        .ranked
                        .iter()
                        .take(app.k.clamp(1, 4))
                        .copied()
                        .collect(),
                    _ => Vec::new(),
                };
                (
                    &ld.mlp,
                    rd.map(|d| &d.mlp),
                    vec![m; ld.mlp.len()],
                    labels,
                    marks,
                    "d_ff",
                    (app.token, app.ffn_dim),
                )
            }
        }
    };
    let (rows, reference, scale) = match shown {
        Shown::Original => (original.clone(), reference, heatmap::Scale::Magnitude),
        Shown::Attacked => (
            attacked.ok_or_else(waiting)?.clone(),
            reference,
            heatmap::Scale::Magnitude,
        ),
        Shown::Change => {
            let attacked = attacked.ok_or_else(waiting)?;
            let rows = original
                .iter()
                .zip(attacked)
                .zip(&reference)
                .map(|((o, a), &m)| {
                    o.iter()
                        .zip(a)
                        .map(|(&o, &a)| heatmap::log_change(a, o, 1e-3 * m))
                        .collect()
                })
                .collect();
            let ones = vec![1.0; original.len()];
            (rows, ones, heatmap::Scale::Change)
        }
    };
    Ok(Picture {
        rows,
        reference,
        scale,
        cursor,
        row_labels,
        marks,
        col_name,
    })
}

/// The heatmap's title: the view and what it shows of the pair.
fn heatmap_title(app: &App) -> String {
    let view = match app.view {
        View::Layers => "layers x dims, max |x| over tokens".to_string(),
        View::Tokens => format!("layer {}: tokens x dims", app.layer),
        View::Ffn => format!("layer {}: tokens x d_ff", app.layer),
    };
    let same = app.models[0] == app.models[1];
    let shown = match (app.shown, same) {
        (Shown::Original, true) => "original".to_string(),
        (Shown::Attacked, true) => "attacked".to_string(),
        (Shown::Change, true) => "attacked vs original".to_string(),
        (Shown::Original, false) => app.model_name(0),
        (Shown::Attacked, false) => app.model_name(1),
        (Shown::Change, false) => format!("{} vs {}", app.model_name(1), app.model_name(0)),
    };
    format!(" {view} · {shown} ")
}

fn draw_heatmap(frame: &mut Frame, area: Rect, app: &mut App) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(heatmap_title(app));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    app.heatmap_area = Some(inner);
    if let Some((done, total)) = app.loading {
        let g = Gauge::default()
            .gauge_style(Style::new().fg(Color::Green))
            .ratio(done as f64 / total.max(1) as f64)
            .label(format!("loading weights {done}/{total}"));
        frame.render_widget(
            g,
            Rect {
                height: inner.height.min(1),
                ..inner
            },
        );
        return;
    }
    let pic = match picture(app, app.shown) {
        Ok(p) => p,
        Err(message) => {
            frame.render_widget(Paragraph::new(message).style(DIM), inner);
            return;
        }
    };
    // The left gutter holds the row labels; the last two lines the dim
    // axis and the colour bar (dropped when the panel is too small).
    let axes = inner.height >= 5 && inner.width >= 24;
    let label_width = pic
        .row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(pic.col_name.len(), 8) as u16;
    let gutter = if axes { label_width + 1 } else { 0 };
    let plot = Rect {
        x: inner.x + gutter,
        width: inner.width - gutter,
        height: if axes { inner.height - 2 } else { inner.height },
        ..inner
    };
    app.heatmap_area = Some(plot);
    frame.render_widget(
        Heatmap {
            rows: &pic.rows,
            reference: &pic.reference,
            cursor: Some(pic.cursor),
            scale: pic.scale,
        },
        plot,
    );
    if !axes {
        return;
    }
    let Some(g) = heatmap::Geometry::new(plot, pic.rows.len(), pic.rows[0].len()) else {
        return;
    };
    let massive_layer = app.probe.as_ref().and_then(|p| p.report.massive_layer);
    let buf = frame.buffer_mut();
    // Row labels: each line names the first row of its upper pixel, once.
    let mut last = None;
    for y in 0..plot.height {
        let row = g.rows_of(2 * y as usize).start;
        if last == Some(row) {
            continue;
        }
        last = Some(row);
        let mut style = DIM;
        if app.view == View::Layers && Some(row) == massive_layer {
            style = ACCENT;
        }
        if row == pic.cursor.0 {
            style = style.fg(Color::White).add_modifier(Modifier::BOLD);
        }
        let text: String = pic.row_labels[row]
            .chars()
            .take(label_width as usize)
            .collect();
        let pad = label_width as usize - text.chars().count();
        buf.set_string(
            inner.x,
            plot.y + y,
            format!("{}{text}", " ".repeat(pad)),
            style,
        );
    }
    // The dim axis: 0, the massive dims marked, the last dim.
    let axis_y = plot.y + plot.height;
    let n_cols = pic.rows[0].len();
    buf.set_string(
        inner.x,
        axis_y,
        format!("{:>w$}", pic.col_name, w = label_width as usize),
        DIM,
    );
    // The massive dims first (they matter most), then 0 and the last dim
    // where there is room.
    let mut taken = vec![false; plot.width as usize];
    for &dim in &pic.marks {
        let cell = g.cell_of(dim);
        let label = format!("▲{dim}");
        let width = label.chars().count();
        let fits =
            cell + width <= plot.width as usize && !taken[cell..cell + width].iter().any(|&t| t);
        let text = if fits { label } else { "▲".to_string() };
        if taken[cell] {
            continue;
        }
        for t in taken.iter_mut().skip(cell).take(text.chars().count()) {
            *t = true;
        }
        buf.set_string(plot.x + cell as u16, axis_y, text, ACCENT);
    }
    let last_label = (n_cols - 1).to_string();
    let end = plot.width as usize;
    for (x, label) in [
        (0, "0".to_string()),
        (end.saturating_sub(last_label.len()), last_label),
    ] {
        let free = x + label.len() <= end
            && !taken[x..x + label.len()].iter().any(|&t| t)
            && (x == 0 || !taken[x - 1]);
        if free {
            buf.set_string(plot.x + x as u16, axis_y, &label, DIM);
        }
    }
    frame.render_widget(
        heatmap::ColourBar { scale: pic.scale },
        Rect {
            x: plot.x,
            y: axis_y + 1,
            width: plot.width,
            height: 1,
        },
    );
}

fn draw_readout(frame: &mut Frame, area: Rect, app: &App) {
    let Some(probe) = &app.probe else { return };
    let Ok(original) = picture(app, Shown::Original) else {
        return;
    };
    let (row, col) = original.cursor;
    let at = |p: &Picture| p.rows.get(row).and_then(|r| r.get(col)).copied();
    let v = at(&original).unwrap_or(0.0);
    let m = original
        .reference
        .get(row)
        .copied()
        .unwrap_or(1.0)
        .max(1e-12);
    let token_text = |t: usize| {
        probe
            .report
            .token_texts
            .get(t)
            .map(|s| format!("{:?}", sanitize(s)))
            .unwrap_or_default()
    };
    let place = match app.view {
        View::Layers => format!(" layer {row} · dim {col} · max |x|"),
        View::Tokens => format!(
            " L{} · token {row} {} · dim {col} ·",
            app.layer,
            token_text(row)
        ),
        View::Ffn => format!(
            " L{} · token {row} {} · d_ff dim {col} ·",
            app.layer,
            token_text(row)
        ),
    };
    // Beside the original's value: the attacked one when the heatmap shows
    // the pair, else where the maximum sits (or whether the dim is picked).
    let attacked = (app.shown != Shown::Original)
        .then(|| picture(app, Shown::Attacked).ok())
        .flatten()
        .and_then(|p| at(&p));
    let extra = match (attacked, app.view) {
        (Some(a), _) => format!(" → attacked {a:.2} ({:.0}x)", a.abs() / m),
        (None, View::Layers) => probe
            .report
            .layers
            .get(row)
            .and_then(|l| l.top.iter().find(|a| a.dim == col))
            .map(|a| format!(" at token {} {}", a.position, token_text(a.position)))
            .unwrap_or_default(),
        (None, View::Ffn) if app.custom.contains(&col) => " · picked".into(),
        (None, _) => String::new(),
    };
    let text = format!("{place} {v:.2} · {:.0}x median{extra}", v.abs() / m);
    frame.render_widget(
        Paragraph::new(text).style(Style::new().fg(Color::White)),
        area,
    );
}

fn draw_weights(frame: &mut Frame, area: Rect, app: &App) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" massive weights ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(probe) = &app.probe else { return };
    let r = &probe.report;
    let mut lines = vec![match r.massive_layer {
        Some(l) => Line::from(vec![
            Span::raw("massive layer "),
            Span::styled(l.to_string(), ACCENT),
        ]),
        None => Line::styled(format!("none massive; layer {}", probe.attack_layer), DIM),
    }];
    if let Some(a) = r.massive_activations.first() {
        lines.push(Line::raw(format!("hidden dim {} = {:.0}", a.dim, a.value)));
    }
    if let (Some(sw), Some(_)) = (r.super_weights.first(), r.massive_layer) {
        let zeroed = app.mode == AttackMode::Super;
        lines.push(Line::styled(
            format!(
                "{}super w [{},{}] {:.3}",
                if zeroed { "✗ " } else { "" },
                sw.row,
                sw.col,
                sw.value
            ),
            if zeroed {
                Style::new().fg(Color::Red)
            } else {
                Style::default()
            },
        ));
    }
    lines.push(Line::styled("  d_ff   value |up| |gate|", DIM));
    let attack = app.attack();
    for s in &probe.row_stats {
        let (mark, style) = match &attack {
            Some(a) if a.mode == AttackMode::Super => (" ", Style::default()),
            Some(a) if a.layer == probe.attack_layer && a.dims.contains(&s.dim) => match a.mode {
                AttackMode::Zero | AttackMode::RandomZero => ("✗", Style::new().fg(Color::Red)),
                _ => ("●", Style::new().fg(Color::Green)),
            },
            Some(a)
                if matches!(a.mode, AttackMode::Keep | AttackMode::RandomKeep)
                    && a.layer == probe.attack_layer =>
            {
                ("✗", Style::new().fg(Color::Red))
            }
            _ => (" ", Style::default()),
        };
        lines.push(Line::styled(
            format!(
                "{mark}{:>5} {:>7.1} {:>4.1} {:>4.1}",
                s.dim, s.value, s.up_norm, s.gate_norm
            ),
            style,
        ));
    }
    if !app.custom.is_empty() {
        let dims: Vec<String> = app.custom.iter().map(usize::to_string).collect();
        lines.push(Line::styled(
            format!("custom: {}", dims.join(",")),
            Style::new().fg(Color::Cyan),
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Control characters would move the terminal's cursor: show them as dots.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if c.is_control() => '·',
            c => c,
        })
        .collect()
}

fn draw_generation(frame: &mut Frame, area: Rect, app: &App) {
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(area);
    let ppl = |i: usize| match if i == 0 {
        app.perplexity.0
    } else {
        app.perplexity.1
    } {
        Some(p) => format!(" · ppl {}", format_ppl(p)),
        None => " · ppl …".to_string(),
    };
    let busy = if app.generating { " …" } else { "" };
    // With adapters each panel names its model; two different models run
    // the same attack.
    let adapters = app.info.as_ref().is_some_and(|i| !i.adapters.is_empty());
    let same = app.models[0] == app.models[1];
    let label = |side: usize| {
        let attack = if side == 0 && same {
            "original".to_string()
        } else {
            attack_label(app)
        };
        if adapters {
            format!("{} · {attack}", app.model_name(side))
        } else {
            attack
        }
    };
    let titles = [
        format!(" {}{}{}{busy} ", label(0), ppl(0), accuracy(app, 0)),
        format!(" {}{}{}{busy} ", label(1), ppl(1), accuracy(app, 1)),
    ];
    for (i, col) in cols.iter().enumerate() {
        let style = if i == 1 && app.mode != AttackMode::Original {
            Style::new().fg(Color::Cyan)
        } else {
            Style::default()
        };
        let p = Paragraph::new(sanitize(&app.generated[i]))
            .wrap(Wrap { trim: false })
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(titles[i].clone())
                    .border_style(style),
            );
        frame.render_widget(p, *col);
    }
}

/// " · arc_easy 52.3%" once the accuracy key was pressed; while it runs, a
/// gauge of the questions scored (both models together).
fn accuracy(app: &App, side: usize) -> String {
    if !app.accuracy_on {
        return String::new();
    }
    let value = if side == 0 {
        app.accuracy.0
    } else {
        app.accuracy.1
    };
    match (value, app.accuracy_progress) {
        (Some(v), _) => format!(" · {} {:.1}%", app.task_name(), 100.0 * v),
        (None, Some((done, total))) => {
            let filled = (8 * done / total.max(1)).min(8);
            format!(
                " · {} {}{} {done}/{total}",
                app.task_name(),
                "█".repeat(filled),
                "░".repeat(8 - filled)
            )
        }
        (None, None) => format!(" · {} …", app.task_name()),
    }
}

fn draw_prompt(frame: &mut Frame, area: Rect, app: &App) {
    let mut spans = vec![
        Span::styled(" prompt> ", DIM),
        Span::raw(sanitize(&app.prompt)),
    ];
    if app.editing {
        spans.push(Span::styled("█", ACCENT));
        spans.push(Span::styled("  Enter runs · Esc cancels", DIM));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(frame: &mut Frame, area: Rect) {
    // As many hints as fit, in the table's order; help and quit always show.
    let hints: Vec<(&str, &str)> = BINDINGS
        .iter()
        .filter(|b| !b.hint.is_empty())
        .map(|b| (b.label, b.hint))
        .collect();
    let width = |(l, h): &(&str, &str)| l.chars().count() + h.chars().count() + 2;
    let kept = |(l, _): &(&str, &str)| *l == "?" || *l == "q";
    let mut room = (area.width as usize)
        .saturating_sub(hints.iter().filter(|h| kept(h)).map(width).sum::<usize>());
    let mut spans = Vec::new();
    let mut full = false;
    for hint in &hints {
        if !kept(hint) {
            if full || width(hint) > room {
                full = true;
                continue;
            }
            room -= width(hint);
        }
        spans.push(Span::styled(format!(" {}", hint.0), ACCENT));
        spans.push(Span::styled(format!(" {}", hint.1), DIM));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The tour's caption, over the bottom of the generation panels: their
/// titles (the attack and the perplexities) stay visible above it.
fn draw_tour(frame: &mut Frame, area: Rect, tour: &super::tour::Tour) {
    let step = tour.step();
    let width = area.width.saturating_sub(2).max(1) as usize;
    let lines = textwrap_lines(&step.caption, width);
    let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(1));
    let rect = Rect {
        y: area.y + area.height - h,
        height: h,
        ..area
    };
    let title = format!(
        " tour {}/{}: {} · space next · ← back · Esc ends ",
        tour.at + 1,
        tour.steps.len(),
        step.title
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines.into_iter().map(Line::raw).collect::<Vec<_>>()).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(Style::new().fg(Color::Yellow))
                .title(Span::styled(title, ACCENT)),
        ),
        rect,
    );
}

/// Greedy word wrap to `width` columns.
fn textwrap_lines(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let need = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if !line.is_empty() && need > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let w = area.width.min(72);
    let shown = BINDINGS.iter().filter(|b| !b.help.is_empty());
    let h = (shown.clone().count() as u16 + 3).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines: Vec<Line> = shown
        .map(|b| {
            Line::from(vec![
                Span::styled(format!(" {:>6}  ", b.label), ACCENT),
                Span::raw(b.help),
            ])
        })
        .collect();
    lines.push(Line::styled(
        "  mouse: click a cell to select it · any key closes",
        DIM,
    ));
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        rect,
    );
    let _ = heatmap::CURSOR;
}
