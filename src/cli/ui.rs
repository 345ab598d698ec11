//! `mwtop [MODEL]`: the terminal UI. What can be checked before the screen
//! is taken is checked here, so a typo fails on the plain terminal.

use color_eyre::eyre::{eyre, Result, WrapErr};

use super::args::RunArgs;

/// The UI's options (also the options before a subcommand).
#[derive(clap::Args)]
pub struct UiArgs {
    /// Model: a Hugging Face directory, a .gguf file or a hub id
    /// (owner/name). Omitted: the SmolLM2-135M-Instruct demo model.
    pub model: Option<String>,

    /// The UI's first prompt.
    #[arg(long)]
    prompt: Option<String>,

    /// Start with the guided tour (T in the UI): the House of Cards story
    /// on this model, step by step.
    #[arg(long)]
    tour: bool,

    #[command(flatten)]
    run: RunArgs,
}

impl UiArgs {
    pub fn run(self) -> Result<()> {
        // The device itself is created on the engine thread; check the spelling here.
        mwtop::runtime::check_device_spec(self.run.device.as_deref())?;
        if let Some(m) = &self.model {
            if !std::path::Path::new(m).exists()
                && !mwtop::checkpoint::hub::looks_like_hub_id(m)
                && mwtop::runtime::demo_named(m).is_none()
            {
                return Err(eyre!("{m}: no such file or directory"));
            }
        }
        for dir in &self.run.adapter {
            let config = dir.join(mwtop::checkpoint::adapter::CONFIG_FILE);
            if !config.is_file() {
                return Err(eyre!(
                    "--adapter {}: no adapter_config.json there",
                    dir.display()
                ));
            }
        }
        // The first run downloads a demo model: show pip's progress on the
        // plain terminal rather than under the UI.
        match self.model.as_deref().map(mwtop::runtime::demo_named) {
            None => drop(mwtop::demo::ensure().wrap_err("demo model")?),
            Some(Some(m)) => drop(mwtop::demo::ensure_model(m).wrap_err("demo model")?),
            Some(None) => {}
        }
        mwtop::tui::run(mwtop::tui::Launch {
            weights: self.run.weights(),
            spec: self.model,
            device: self.run.device,
            dtype: self.run.dtype.into(),
            prompt: self.prompt,
            adapters: self.run.adapter,
            tour: self.tour,
        })?;
        Ok(())
    }
}
