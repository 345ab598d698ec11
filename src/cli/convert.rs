//! `mwtop convert`: a GGUF file into a Hugging Face directory.

use std::path::PathBuf;

use color_eyre::eyre::Result;

use mwtop::convert::ConvertReport;

use super::args::DTypeArg;
use super::Report;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The .gguf file (or hub id / path mwtop can open).
    model: String,
    /// Output directory; must not exist (or be empty).
    out: PathBuf,
    /// dtype of the written tensors.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl ConvertArgs {
    pub fn run(self) -> Result<()> {
        let ckpt = super::open(Some(&self.model), None)?;
        mwtop::convert::convert(&ckpt, &self.out, self.dtype.into())?.print(self.json)
    }
}

impl Report for ConvertReport {
    fn text(&self) -> String {
        format!(
            "wrote {} ({} tensors, {:.1} MB, {})\n",
            self.out_dir.display(),
            self.tensors,
            self.bytes as f64 / 1e6,
            self.dtype
        )
    }
}
