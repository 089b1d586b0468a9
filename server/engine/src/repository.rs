//! The model repository: where models and their versions come from.
//!
//! Today it reads a Triton-style layout on local disk (`<repo>/<model>/[config.pbtxt]`,
//! `<repo>/<model>/<version>/<model file>`) or a single model directory as KServe mounts it at
//! `/mnt/models`. Object storage plugs in here later by fetching into a local cache directory first, since
//! every runtime loads from a local path.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ModelConfig};

/// One version directory of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSource {
    /// Numeric version.
    pub version: u64,
    /// Directory holding the model file.
    pub dir: PathBuf,
}

/// A model found in the repository, with its config and every version on disk.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// Model name (the directory name, or `--model_name`).
    pub name: String,
    /// The model's directory.
    pub dir: PathBuf,
    /// Parsed `config.pbtxt`, or defaults.
    pub config: ModelConfig,
    /// Versions found, ascending.
    pub versions: Vec<VersionSource>,
}

/// Why a repository or a model in it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model's config file is invalid.
    #[error("model `{model}`: {source}")]
    Config {
        /// Model name.
        model: String,
        /// What was wrong.
        source: ConfigError,
    },
    /// The config names another model.
    #[error("model `{model}`: config.pbtxt says name `{config_name}`; it must match the directory")]
    NameMismatch {
        /// Directory name.
        model: String,
        /// Name in the file.
        config_name: String,
    },
}

/// Where models are read from.
#[derive(Debug, Clone)]
pub enum Repository {
    /// A directory of model directories.
    Local(PathBuf),
    /// One model's directory, served under the given name (KServe `--model_name` / `--model_dir`).
    SingleModel {
        /// Served name.
        name: String,
        /// Directory holding version subdirectories, or the model file directly.
        dir: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepositoryError + '_ {
    move |source| RepositoryError::Io { path: path.to_path_buf(), source }
}

impl Repository {
    /// Lists the model names the repository holds.
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        match self {
            Repository::SingleModel { name, .. } => Ok(vec![name.clone()]),
            Repository::Local(root) => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(root).map_err(io(root))? {
                    let entry = entry.map_err(io(root))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if entry.path().is_dir() && !name.starts_with('.') {
                        names.push(name);
                    }
                }
                names.sort();
                Ok(names)
            }
        }
    }

    /// Reads one model: its config and version directories.
    pub fn read_model(&self, name: &str) -> Result<ModelSource, RepositoryError> {
        let (dir, flat_allowed) = match self {
            Repository::Local(root) => (root.join(name), false),
            Repository::SingleModel { dir, .. } => (dir.clone(), true),
        };
        let config_path = dir.join("config.pbtxt");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
            let config = ModelConfig::from_pbtxt(&text)
                .map_err(|source| RepositoryError::Config { model: name.to_string(), source })?;
            if let Some(config_name) = &config.name
                && config_name != name
                && !flat_allowed
            {
                return Err(RepositoryError::NameMismatch {
                    model: name.to_string(),
                    config_name: config_name.clone(),
                });
            }
            config
        } else {
            ModelConfig::default()
        };
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let file_name = entry.file_name();
            let Some(version) = file_name.to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
            if entry.path().is_dir() {
                versions.push(VersionSource { version, dir: entry.path() });
            }
        }
        if versions.is_empty() && flat_allowed {
            // KServe's storage initializer puts the model file straight into the model dir.
            versions.push(VersionSource { version: 1, dir: dir.clone() });
        }
        versions.sort_by_key(|v| v.version);
        Ok(ModelSource { name: name.to_string(), dir, config, versions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferroserve-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn scans_versions_and_config() {
        let root = temp_dir("scan");
        std::fs::create_dir_all(root.join("a/1")).unwrap();
        std::fs::create_dir_all(root.join("a/10")).unwrap();
        std::fs::create_dir_all(root.join("a/notaversion")).unwrap();
        std::fs::write(root.join("a/config.pbtxt"), "max_batch_size: 4").unwrap();
        std::fs::create_dir_all(root.join("b/2")).unwrap();
        std::fs::write(root.join("b/config.pbtxt"), "name: \"other\"").unwrap();
        let repo = Repository::Local(root.clone());
        assert_eq!(repo.model_names().unwrap(), ["a", "b"]);
        let a = repo.read_model("a").unwrap();
        assert_eq!(a.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 10]);
        assert_eq!(a.config.max_batch_size, Some(4));
        assert!(matches!(repo.read_model("b"), Err(RepositoryError::NameMismatch { .. })));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn single_model_dir_without_versions_is_version_1() {
        let dir = temp_dir("single");
        std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        let repo = Repository::SingleModel { name: "m".into(), dir: dir.clone() };
        let m = repo.read_model("m").unwrap();
        assert_eq!(m.versions, vec![VersionSource { version: 1, dir: dir.clone() }]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
