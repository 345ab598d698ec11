//! The UI's `s` key: the view on screen as a PNG figure.

use super::{App, View};

impl App {
    /// Writes the current view as a PNG figure into `dir` (the original,
    /// and under an attack the attacked model and the change); returns its path.
    pub fn save_figure(&self, dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
        use crate::export::views;
        let (Some(probe), Some(states), Some(info)) = (&self.probe, &self.states, &self.info)
        else {
            return Err("the model's states are not there yet".into());
        };
        let view = match self.view {
            View::Layers => views::View::Layers,
            View::Tokens => views::View::Tokens,
            View::Ffn => views::View::Ffn,
        };
        if view != views::View::Layers && states.layer() != self.layer {
            return Err(format!("layer {} is still being read", self.layer));
        }
        let attack = self.attack();
        let label = attack.as_ref().map(crate::display::describe_attack);
        let sides = [states.sides[0].clone(), states.sides[1].clone()];
        let shown = if label.is_some() {
            &sides[..]
        } else {
            &sides[..1]
        };
        let marks: Vec<usize> = match &attack {
            Some(a) if a.layer == self.layer => a.dims.iter().take(4).copied().collect(),
            _ => probe.ranked.iter().take(2).copied().collect(),
        };
        let fig = views::heatmaps(
            view,
            &info.name,
            &probe.report,
            shown,
            label.as_deref(),
            &marks,
        );
        let png = fig
            .render(crate::export::figure::Format::Png)
            .map_err(|e| e.to_string())?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let what = match view {
            views::View::Layers => "layers".to_string(),
            views::View::Tokens => format!("tokens-L{}", self.layer),
            views::View::Ffn => format!("dff-L{}", self.layer),
        };
        let mode = attack
            .as_ref()
            .map_or("original".to_string(), |a| a.mode.to_string());
        let path = dir.join(format!("mwtop-{}-{what}-{mode}-{secs}.png", info.name));
        crate::export::write_atomically(&path, &png).map_err(|e| e.to_string())?;
        Ok(path)
    }
}
