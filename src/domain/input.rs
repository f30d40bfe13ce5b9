//! Which files a path given on the command line names (`plan --from`, `inject`).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A file, or the sorted `*.yaml`/`*.yml` files of a directory (shared with `inject`).
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    // Anything but a directory is read as one file (a pipe such as `<(kustomize build)` too).
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::NoInput(format!(
            "{}: no *.yaml or *.yml files in this directory",
            path.display()
        )));
    }
    Ok(files)
}
