//! `pe index export --parquet FILE` and `pe index import FILE...`: a thin shell over
//! `pe_index`'s Parquet export and import.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use pe_index::Index;

use super::index::{AnnArg, UpdateProgress};
use super::search::search_index_dir;

/// Arguments of `pe index export`.
#[derive(Debug, clap::Args)]
pub struct ExportCmd {
    /// The Parquet file to write (written to a temporary name, renamed when complete).
    #[arg(long, required = true)]
    parquet: PathBuf,
    /// The index directory (default: the nearest .pe-index from the current directory up).
    #[arg(long)]
    index: Option<PathBuf>,
}

/// Arguments of `pe index import`.
#[derive(Debug, clap::Args)]
pub struct ImportCmd {
    /// Parquet files: exports of `pe index`, parts of `pe embed-image --output-dir` (a folder
    /// of parts: its *.parquet files), or any with path, hash and embedding columns.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The index directory; created from the first file's manifest when there is none.
    #[arg(long, required = true)]
    index: PathBuf,
    /// The approximate (HNSW) index, as `pe index --ann`.
    #[arg(long, value_enum, default_value_t = AnnArg::Auto)]
    ann: AnnArg,
}

pub fn run_export(cmd: ExportCmd) -> anyhow::Result<ExitCode> {
    if cmd.parquet.extension().and_then(|e| e.to_str()) != Some("parquet") {
        bail!("--parquet {} must end in .parquet", cmd.parquet.display());
    }
    if let Some(parent) = cmd.parquet.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        bail!("--parquet {}: folder {} does not exist", cmd.parquet.display(), parent.display());
    }
    let dir = search_index_dir(&cmd.index)?;
    let index = Index::open(&dir)?;
    let started = Instant::now();
    let rows = index.export_parquet(&cmd.parquet)?;
    eprintln!(
        "pe: wrote {rows} rows of {} to {} in {:.1}s",
        index.manifest().describe(),
        cmd.parquet.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The files named, a folder standing for its `*.parquet` files (sorted; hidden ones, such as
/// the temporary files of unfinished parts, left out).
fn parquet_files(named: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for f in named {
        if f.is_dir() {
            let mut parts: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("{}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "parquet")
                        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        && p.is_file()
                })
                .collect();
            if parts.is_empty() {
                bail!("{}: a folder without .parquet files", f.display());
            }
            parts.sort();
            files.append(&mut parts);
        } else if f.is_file() {
            files.push(f.clone());
        } else {
            bail!("{}: no such file", f.display());
        }
    }
    Ok(files)
}

pub fn run_import(cmd: ImportCmd) -> anyhow::Result<ExitCode> {
    match import(cmd) {
        // A damaged or foreign file is an unreadable input (exit 1), not a usage error.
        Err(e) if e.downcast_ref::<pe_index::Error>().is_some_and(|e| matches!(e, pe_index::Error::Parquet { .. })) => {
            eprintln!("pe: {}", crate::said_once(&e));
            Ok(ExitCode::from(1))
        }
        other => other,
    }
}

fn import(mut cmd: ImportCmd) -> anyhow::Result<ExitCode> {
    cmd.files = parquet_files(&cmd.files)?;
    let mut index = match Index::open(&cmd.index) {
        Ok(i) => i,
        Err(pe_index::Error::NoIndex(_)) => {
            let manifest = pe_index::manifest_of(&cmd.files[0])?.with_context(|| {
                format!(
                    "{} has no pe.manifest metadata, so it cannot say which model made it; import it into an index built with that model (pe index ... --index {})",
                    cmd.files[0].display(),
                    cmd.index.display()
                )
            })?;
            Index::open_or_create(&cmd.index, &manifest)?
        }
        Err(e) => return Err(e.into()),
    };
    let started = Instant::now();
    let mut view = UpdateProgress::new();
    let report = index.import_parquet(&cmd.files, cmd.ann.mode(), &mut |p| view.on(p));
    view.finish();
    let report = report?;
    eprintln!(
        "pe: imported {} rows ({} distinct contents) into {} in {:.1}s",
        report.rows,
        report.contents,
        cmd.index.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
