//! Publishing output atomically: results are written to a hidden staging folder next to the
//! output and renamed into place only when complete, so a failed or interrupted run leaves
//! nothing a pipeline could mistake for a result.

use std::path::{Path, PathBuf};

use crate::error::{JobsError, Result};

/// Fails when `output` exists and may not be replaced.
pub fn check_target(output: &Path, overwrite: bool) -> Result<()> {
    if output.exists() && !overwrite {
        return Err(JobsError::InvalidInput(format!(
            "output folder {} already exists; choose another or pass --overwrite to replace it",
            output.display()
        )));
    }
    if output.exists() && !output.is_dir() {
        return Err(JobsError::InvalidInput(format!(
            "output {} exists and is not a folder",
            output.display()
        )));
    }
    Ok(())
}

/// A staging folder, removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    published: bool,
}

fn sibling(output: &Path, what: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    output.with_file_name(format!(
        ".{name}.almanac-{what}-{}-{nanos}",
        std::process::id()
    ))
}

impl Staging {
    pub fn create(output: &Path) -> Result<Staging> {
        let path = sibling(output, "staging");
        let data = path.join("data");
        std::fs::create_dir_all(&data).map_err(|e| JobsError::io("cannot create", &data, e))?;
        Ok(Staging {
            path,
            published: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    /// The data folder as a URL executors write to.
    pub fn data_url(&self) -> Result<String> {
        url::Url::from_directory_path(self.data_dir())
            .map(|u| u.to_string())
            .map_err(|_| {
                JobsError::InvalidInput(format!(
                    "cannot write to {}: not an absolute path",
                    self.data_dir().display()
                ))
            })
    }

    /// Moves the staged folder to `output`, replacing an existing folder when `overwrite`.
    pub fn publish(mut self, output: &Path, overwrite: bool) -> Result<()> {
        check_target(output, overwrite)?;
        let old = output.exists().then(|| sibling(output, "replaced"));
        if let Some(old) = &old {
            std::fs::rename(output, old)
                .map_err(|e| JobsError::io("cannot move aside", output, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, output) {
            if let Some(old) = &old {
                // Put the previous result back rather than leave no result at all.
                let _ = std::fs::rename(old, output);
            }
            return Err(JobsError::io("cannot publish", output, e));
        }
        self.published = true;
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).map_err(|e| JobsError::io("cannot remove", &old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
