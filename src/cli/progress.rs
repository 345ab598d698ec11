//! Progress on stderr: a counter rewritten in place on a terminal, one line
//! per step otherwise (so logs of scripted runs stay readable).

use std::io::{IsTerminal, Write};

use candle_core::{DType, Device};

use mwtop::checkpoint::Checkpoint;
use mwtop::model::{Model, ModelError, WeightPrecision};

/// A counter on stderr; silent when `lines` is false and stderr is no terminal.
pub struct Counter {
    tty: bool,
    lines: bool,
    shown: bool,
}

impl Counter {
    /// `lines`: also print one line per update when stderr is not a terminal.
    pub fn new(lines: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            lines,
            shown: false,
        }
    }

    /// Whether updates are rewritten in place (stderr is a terminal).
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    pub fn show(&mut self, msg: &str) {
        if self.tty {
            eprint!("\rmwtop: {msg}");
            let _ = std::io::stderr().flush();
            self.shown = true;
        } else if self.lines {
            eprintln!("mwtop: {msg}");
        }
    }

    /// Ends the line with a final message (or just the line when None).
    pub fn finish(&mut self, msg: Option<&str>) {
        if self.tty && self.shown {
            match msg {
                Some(m) => eprintln!("\rmwtop: {m}          "),
                None => eprintln!(),
            }
        }
        self.shown = false;
    }
}

/// Loads the model, with a counter on stderr when it is a terminal.
pub fn load_model(
    ckpt: &Checkpoint,
    devices: &[Device],
    dtype: DType,
    precision: WeightPrecision,
) -> Result<Model, ModelError> {
    let start = std::time::Instant::now();
    let mut counter = Counter::new(false);
    let model = Model::load_on(ckpt, devices, dtype, precision, |done, total| {
        counter.show(&format!("loading weights {done}/{total}"));
    })?;
    counter.finish(Some(&format!(
        "loaded {} weights in {:.1}s",
        ckpt.tensors().len(),
        start.elapsed().as_secs_f64()
    )));
    tracing::info!(
        elapsed_ms = start.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(model)
}
