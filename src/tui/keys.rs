//! The one key table: it drives the handler, the footer hints and the `?` help.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Original,
    Zero,
    Keep,
    Random,
    SuperWeight,
    TargetLayer,
    MoreK,
    LessK,
    ToggleDim,
    NextView,
    PrevView,
    CycleShown,
    Tour,
    Save,
    EditPrompt,
    Regenerate,
    Accuracy,
    NextTask,
    NextModel,
    PrevModelLeft,
    ToggleLog,
    Help,
    Quit,
    Left,
    Right,
    Up,
    Down,
}

pub struct Binding {
    pub keys: &'static [KeyCode],
    /// Shown in the footer and the help, e.g. "z".
    pub label: &'static str,
    /// Short footer text; empty: help only.
    pub hint: &'static str,
    pub help: &'static str,
    pub action: Action,
}

pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: &[KeyCode::Char('o')],
        label: "o",
        hint: "original",
        help: "original model: no attack",
        action: Action::Original,
    },
    Binding {
        keys: &[KeyCode::Char('z')],
        label: "z",
        hint: "zero",
        help: "zero the top-k massive weights (rows of up/gate_proj)",
        action: Action::Zero,
    },
    Binding {
        keys: &[KeyCode::Char('r')],
        label: "r",
        hint: "keep only",
        help: "keep only the top-k massive weights (retain), zero the other rows",
        action: Action::Keep,
    },
    Binding {
        keys: &[KeyCode::Char('x')],
        label: "x",
        hint: "random",
        help: "random-k control of the current attack (k random rows)",
        action: Action::Random,
    },
    Binding {
        keys: &[KeyCode::Char('w')],
        label: "w",
        hint: "super",
        help: "zero only the super weight (one down_proj scalar, Yu et al.)",
        action: Action::SuperWeight,
    },
    Binding {
        keys: &[KeyCode::Char('t')],
        label: "t",
        hint: "",
        help: "attack the cursor's layer (t again: the massive layer)",
        action: Action::TargetLayer,
    },
    Binding {
        keys: &[KeyCode::Char('+'), KeyCode::Char('=')],
        label: "+/-",
        hint: "k×2/÷2",
        help: "double / halve k, the massive weights touched (down to 0)",
        action: Action::MoreK,
    },
    Binding {
        keys: &[KeyCode::Char('-'), KeyCode::Char('_')],
        label: "-",
        hint: "",
        // Shown with +'s line.
        help: "",
        action: Action::LessK,
    },
    Binding {
        keys: &[KeyCode::Char(' ')],
        label: "space",
        hint: "pick dim",
        help: "pick/unpick the cursor's d_ff dim for a custom attack",
        action: Action::ToggleDim,
    },
    Binding {
        keys: &[KeyCode::Tab],
        label: "Tab",
        hint: "view",
        help: "views: layers, tokens x dims, tokens x d_ff (S-Tab back)",
        action: Action::NextView,
    },
    Binding {
        keys: &[KeyCode::BackTab],
        label: "S-Tab",
        hint: "",
        // Shown with Tab's line.
        help: "",
        action: Action::PrevView,
    },
    Binding {
        keys: &[KeyCode::Char('c')],
        label: "c",
        hint: "compare",
        help: "heatmap: original, attacked, or their change (log ratio)",
        action: Action::CycleShown,
    },
    Binding {
        keys: &[KeyCode::Char('s')],
        label: "s",
        hint: "",
        help: "save the heatmap's view as a PNG figure",
        action: Action::Save,
    },
    Binding {
        keys: &[KeyCode::Char('T')],
        label: "T",
        hint: "tour",
        help: "guided tour of this model (space next, ← back, Esc ends)",
        action: Action::Tour,
    },
    Binding {
        keys: &[KeyCode::Char('e')],
        label: "e",
        hint: "prompt",
        help: "edit the prompt (Enter runs it, Esc cancels)",
        action: Action::EditPrompt,
    },
    Binding {
        keys: &[KeyCode::Char('g')],
        label: "g",
        hint: "regen",
        help: "regenerate",
        action: Action::Regenerate,
    },
    Binding {
        keys: &[KeyCode::Char('a')],
        label: "a",
        hint: "acc",
        help: "zero-shot accuracy of both sides on the task (A picks it)",
        action: Action::Accuracy,
    },
    Binding {
        keys: &[KeyCode::Char('A')],
        label: "A",
        hint: "",
        help: "next zero-shot task (ARC-Easy first, then ARC-C, BoolQ, ...)",
        action: Action::NextTask,
    },
    Binding {
        keys: &[KeyCode::Char('m')],
        label: "m/M",
        hint: "",
        help: "--adapter: the right (M: left) panel's model, base or adapter",
        action: Action::NextModel,
    },
    Binding {
        keys: &[KeyCode::Char('M')],
        label: "M",
        hint: "",
        // Shown with m's line.
        help: "",
        action: Action::PrevModelLeft,
    },
    Binding {
        keys: &[KeyCode::Char('L')],
        label: "L",
        hint: "log",
        help: "show/hide the log panel",
        action: Action::ToggleLog,
    },
    Binding {
        keys: &[KeyCode::Char('?')],
        label: "?",
        hint: "help",
        help: "this help; q quits",
        action: Action::Help,
    },
    Binding {
        keys: &[KeyCode::Char('q')],
        label: "q",
        hint: "quit",
        // Shown with ?'s line.
        help: "",
        action: Action::Quit,
    },
    Binding {
        keys: &[KeyCode::Left, KeyCode::Char('h')],
        label: "←→ hl",
        hint: "",
        help: "cursor left / right (dims)",
        action: Action::Left,
    },
    Binding {
        keys: &[KeyCode::Right, KeyCode::Char('l')],
        label: "→/l",
        hint: "",
        // Shown with ←'s line.
        help: "",
        action: Action::Right,
    },
    Binding {
        keys: &[KeyCode::Up, KeyCode::Char('k')],
        label: "↑↓ kj",
        hint: "",
        help: "cursor up / down (layers or tokens)",
        action: Action::Up,
    },
    Binding {
        keys: &[KeyCode::Down, KeyCode::Char('j')],
        label: "↓/j",
        hint: "",
        // Shown with ↑'s line.
        help: "",
        action: Action::Down,
    },
];

/// The action bound to a key press (Ctrl-C always quits).
pub fn action_for(key: KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    BINDINGS
        .iter()
        .find(|b| b.keys.contains(&key.code))
        .map(|b| b.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_one_action() {
        let mut seen = Vec::new();
        for b in BINDINGS {
            for k in b.keys {
                assert!(!seen.contains(k), "{k:?} bound twice");
                seen.push(*k);
            }
        }
        assert_eq!(
            action_for(KeyEvent::from(KeyCode::Char('z'))),
            Some(Action::Zero)
        );
        assert_eq!(
            action_for(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
    }
}
