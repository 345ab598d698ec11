//! The heatmap panel: the picture of the current view (original, attacked
//! or their change), its title and the readout line under it.

use super::*;

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

pub(super) fn draw_heatmap(frame: &mut Frame, area: Rect, app: &mut App) {
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

pub(super) fn draw_readout(frame: &mut Frame, area: Rect, app: &App) {
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
