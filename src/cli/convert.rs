//! `mwtop convert`: a GGUF file into a Hugging Face directory.

use std::path::PathBuf;

use color_eyre::eyre::{bail, eyre, Result};

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
        // convert writes into a hidden sibling and renames it: creating the
        // directory first names a place that cannot be written as the user
        // gave it, not by the temporary name.
        let out = &self.out;
        let created = match std::fs::create_dir(out) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => bail!("{}: cannot create the output directory: {e}", out.display()),
        };
        let result = mwtop::convert::convert(&ckpt, out, self.dtype.into());
        match result {
            Ok(report) => report.print(self.json),
            Err(e) => {
                if created {
                    let _ = std::fs::remove_dir(out);
                }
                let tmp = mwtop::checkpoint::temp_sibling(out);
                Err(eyre!(e.to_string().replace(
                    &tmp.display().to_string(),
                    &out.display().to_string()
                )))
            }
        }
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
