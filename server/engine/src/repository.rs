//! The model repository: where models and their versions come from.
//!
//! A repository is one or more roots (Triton's repeatable `--model-repository`), each in Triton's layout
//! (`<root>/<model>/[config.pbtxt]`, `<root>/<model>/<version>/<model file>`), or one model's directory as
//! KServe hands it to a predictor (version subdirectories, or the model file directly). Roots are read
//! through [`Files`]: a listing (names, sizes, change tags) is cheap and is what polling compares; the
//! files themselves are made local only for the versions that get loaded, because every runtime loads from
//! a local path.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{ConfigError, ModelConfig};
use crate::files::{FileInfo, Files, FilesError};

/// One version directory of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSource {
    /// Numeric version.
    pub version: u64,
    /// Files of the version, relative to its directory (`model.onnx`, `model.onnx.data`, ...).
    pub files: Vec<String>,
    /// Changes whenever a file of the version (or the model's config) changes.
    pub fingerprint: u64,
    /// Where the files are in the repository root, for fetching.
    listed: Vec<FileInfo>,
    /// Path of the version directory relative to the root.
    rel: String,
}

/// A model found in the repository, with its config and every version it holds.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// Model name (the directory name, or `--model_name`).
    pub name: String,
    /// Where the model lives, for messages (`/models/mlp`, `s3://bucket/repo/mlp`).
    pub location: String,
    /// Parsed `config.pbtxt`, or defaults.
    pub config: ModelConfig,
    /// Versions found, ascending.
    pub versions: Vec<VersionSource>,
    /// Class labels of the outputs whose config names a `label_filename`, by output name.
    pub labels: BTreeMap<String, Labels>,
    /// Changes whenever any file of the model changes.
    pub fingerprint: u64,
    /// Which root holds the model.
    root: usize,
}

/// The labels of one output: line `i` of its label file is the label of class index `i`.
pub type Labels = Arc<[Bytes]>;

impl ModelSource {
    /// A source with the given config and empty versions, for unit tests of what is derived from it.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, config: ModelConfig, versions: &[u64]) -> Self {
        ModelSource {
            name: name.to_string(),
            location: format!("/{name}"),
            config,
            versions: versions
                .iter()
                .map(|&version| VersionSource {
                    version,
                    files: Vec::new(),
                    fingerprint: version,
                    listed: Vec::new(),
                    rel: format!("{name}/{version}"),
                })
                .collect(),
            labels: BTreeMap::new(),
            fingerprint: 0,
            root: 0,
        }
    }
}

/// Why a repository or a model in it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The storage could not be listed or read.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The model is in none of the roots.
    #[error("model `{0}` is not in the model repository")]
    UnknownModel(String),
    /// Two roots hold a model of this name.
    #[error("model `{model}` is in more than one repository ({first} and {second})")]
    Duplicate {
        /// Model name.
        model: String,
        /// One root.
        first: String,
        /// Another.
        second: String,
    },
    /// The model's config file is invalid.
    #[error("model `{model}`: {source}")]
    Config {
        /// Model name.
        model: String,
        /// What was wrong.
        source: ConfigError,
    },
    /// An output's `label_filename` cannot be used.
    #[error("model `{model}`: output `{output}`: {reason}")]
    Labels {
        /// Model name.
        model: String,
        /// Output whose config names the file.
        output: String,
        /// What is wrong.
        reason: String,
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

impl RepositoryError {
    /// Whether trying again later may succeed (storage unreachable), as opposed to a fault in the files.
    pub fn is_transient(&self) -> bool {
        matches!(self, RepositoryError::Files(e) if e.is_transient())
    }

    /// Whether a download arrived corrupt in every attempt: 503 to a caller, but polling does not download the
    /// same files again until they change (each load downloads them `--storage-retries` + 1 times).
    pub fn is_corrupted(&self) -> bool {
        matches!(self, RepositoryError::Files(e) if e.is_corrupted())
    }
}

/// One root of the repository.
#[derive(Debug, Clone)]
pub struct Root {
    files: Files,
    /// `Some(name)`: the root is one model's directory, served under `name` (KServe `--model_name`).
    single_model: Option<String>,
}

impl Root {
    /// A Triton-layout directory of model directories.
    pub fn models(files: Files) -> Self {
        Root { files, single_model: None }
    }

    /// One model's directory, served under `name`.
    pub fn single_model(name: String, files: Files) -> Self {
        Root { files, single_model: Some(name) }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.files.describe()
    }

    fn model_dir(&self, name: &str) -> String {
        if self.single_model.is_some() { String::new() } else { name.to_string() }
    }
}

/// Where models are read from.
#[derive(Debug, Clone)]
pub struct Repository {
    roots: Vec<Root>,
}

impl Repository {
    /// A repository over these roots (models are looked up in all of them).
    pub fn new(roots: Vec<Root>) -> Self {
        Repository { roots }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.roots.iter().map(Root::describe).collect::<Vec<_>>().join(", ")
    }

    /// Whether [`Repository::model_names`] may be dropped part-way without cost: no root is an archive still to
    /// be downloaded.
    pub fn lists_without_side_effects(&self) -> bool {
        self.roots.iter().all(|root| root.single_model.is_some() || root.files.lists_without_side_effects())
    }

    /// Lists the model names the repository holds, sorted. Fails when any root cannot be listed: a
    /// repository read only in part would unload the models of the unreadable root.
    pub async fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        Ok(self.locate_all().await?.into_keys().collect())
    }

    /// Every model name with the index of the root holding it (the first, when the name is duplicated).
    async fn locate_all(&self) -> Result<BTreeMap<String, usize>, RepositoryError> {
        let mut found = BTreeMap::new();
        for (index, root) in self.roots.iter().enumerate() {
            let names = match &root.single_model {
                Some(name) => vec![name.clone()],
                None => root.files.list_dirs("").await?,
            };
            for name in names {
                found.entry(name).or_insert(index);
            }
        }
        Ok(found)
    }

    /// The root holding `name`; an error when none or several do.
    async fn locate(&self, name: &str) -> Result<usize, RepositoryError> {
        let mut holders = Vec::new();
        for (index, root) in self.roots.iter().enumerate() {
            let holds = match &root.single_model {
                Some(single) => single == name,
                None => root.files.list_dirs("").await?.iter().any(|n| n == name),
            };
            if holds {
                holders.push(index);
            }
        }
        match holders.as_slice() {
            [] => Err(RepositoryError::UnknownModel(name.to_string())),
            [one] => Ok(*one),
            [first, second, ..] => Err(RepositoryError::Duplicate {
                model: name.to_string(),
                first: self.roots[*first].describe(),
                second: self.roots[*second].describe(),
            }),
        }
    }

    /// A fingerprint of the model's files from a listing only (no download): polling compares it.
    pub async fn fingerprint(&self, name: &str) -> Result<u64, RepositoryError> {
        let root = &self.roots[self.locate(name).await?];
        let listed = root.files.list_files(&root.model_dir(name)).await?;
        Ok(fingerprint(&listed))
    }

    /// The fingerprint of every model, from one recursive listing per root (what a poll compares; the same
    /// values as [`Repository::fingerprint`], without a listing per model). Names held by several roots are
    /// left out: loading them fails anyway.
    pub async fn fingerprints(&self) -> Result<BTreeMap<String, u64>, RepositoryError> {
        let mut by_model: BTreeMap<String, Vec<FileInfo>> = BTreeMap::new();
        let mut duplicated = Vec::new();
        for root in &self.roots {
            let listed = root.files.list_files("").await?;
            let mut found: BTreeMap<String, Vec<FileInfo>> = BTreeMap::new();
            match &root.single_model {
                Some(name) => {
                    found.insert(name.clone(), listed);
                }
                None => {
                    // Model directories holding no file yet still get a (stable) fingerprint.
                    for name in root.files.list_dirs("").await? {
                        found.entry(name).or_default();
                    }
                    for file in listed {
                        if let Some((model, _)) = file.path.split_once('/')
                            && let Some(files) = found.get_mut(model)
                        {
                            files.push(file);
                        }
                    }
                }
            }
            for (name, files) in found {
                match by_model.entry(name) {
                    std::collections::btree_map::Entry::Occupied(seen) => duplicated.push(seen.key().clone()),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(files);
                    }
                }
            }
        }
        for name in duplicated {
            by_model.remove(&name);
        }
        Ok(by_model.into_iter().map(|(name, files)| (name, fingerprint(&files))).collect())
    }

    /// Reads one model: its config and versions (a listing and the config file; no model file is fetched).
    /// `config` (Triton's load override: the config and its text) stands in for `config.pbtxt`.
    pub async fn read_model(
        &self,
        name: &str,
        config: Option<(&ModelConfig, &str)>,
    ) -> Result<ModelSource, RepositoryError> {
        let index = self.locate(name).await?;
        let root = &self.roots[index];
        let flat_allowed = root.single_model.is_some();
        let dir = root.model_dir(name);
        let listed = root.files.list_files(&dir).await?;
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let config_rel = format!("{prefix}config.pbtxt");
        let config_info = listed.iter().find(|f| f.path == config_rel);
        let override_config = config;
        let config = match (override_config, config_info) {
            (Some((config, _)), _) => config.clone(),
            (None, None) => ModelConfig::default(),
            (None, Some(_)) => {
                let bytes = root.files.read(&config_rel).await?.unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
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
            }
        };
        config.warn_not_acted_on(name);
        let location = if dir.is_empty() { root.describe() } else { format!("{}/{dir}", root.describe()) };
        let (labels, label_files) = read_labels(root, name, &config, &prefix, &listed, &location).await?;
        let mut config_print = match (override_config, config_info) {
            (Some((_, text)), _) => {
                let mut hasher = std::hash::DefaultHasher::new();
                text.hash(&mut hasher);
                hasher.finish()
            }
            (None, Some(info)) => fingerprint(std::slice::from_ref(info)),
            (None, None) => 0,
        };
        if !label_files.is_empty() {
            // A changed label file changes what every version answers: they are rebuilt like for a new config.
            let mut hasher = std::hash::DefaultHasher::new();
            (config_print, fingerprint(&label_files)).hash(&mut hasher);
            config_print = hasher.finish();
        }
        let mut by_version: BTreeMap<u64, Vec<FileInfo>> = BTreeMap::new();
        let mut flat = Vec::new();
        for file in &listed {
            let rest = &file.path[prefix.len()..];
            match rest.split_once('/') {
                Some((first, _)) => {
                    if let Ok(version) = first.parse::<u64>() {
                        by_version.entry(version).or_default().push(file.clone());
                    }
                }
                None if rest != "config.pbtxt" => flat.push(file.clone()),
                None => {}
            }
        }
        let mut versions: Vec<VersionSource> = by_version
            .into_iter()
            .map(|(version, files)| {
                let rel = format!("{prefix}{version}");
                version_source(version, rel, files, config_print)
            })
            .collect();
        if versions.is_empty() && flat_allowed && !flat.is_empty() {
            // KServe's storage initializer puts the model file straight into the model dir.
            versions.push(version_source(1, dir.clone(), flat, config_print));
        }
        Ok(ModelSource {
            name: name.to_string(),
            location,
            config,
            versions,
            labels,
            fingerprint: fingerprint(&listed),
            root: index,
        })
    }

    /// Makes the files of `versions` local and returns each version's local directory.
    pub async fn fetch(
        &self,
        source: &ModelSource,
        versions: &[u64],
    ) -> Result<BTreeMap<u64, PathBuf>, RepositoryError> {
        let root = &self.roots[source.root];
        let wanted: Vec<&VersionSource> = source.versions.iter().filter(|v| versions.contains(&v.version)).collect();
        let files: Vec<FileInfo> = wanted.iter().flat_map(|v| v.listed.iter().cloned()).collect();
        let local = root.files.fetch(&files).await?;
        Ok(wanted
            .iter()
            .map(|v| (v.version, if v.rel.is_empty() { local.clone() } else { local.join(&v.rel) }))
            .collect())
    }
}

/// Reads the label file of every output whose config names one, from the model directory (beside
/// `config.pbtxt`, as in Triton) through the root's storage: local or object storage alike. Returns the labels by
/// output name and the listing entries of the files read (for fingerprints). A named file that is missing, or a
/// name that leaves the model directory, fails the model's load.
async fn read_labels(
    root: &Root,
    model: &str,
    config: &ModelConfig,
    prefix: &str,
    listed: &[FileInfo],
    location: &str,
) -> Result<(BTreeMap<String, Labels>, Vec<FileInfo>), RepositoryError> {
    let mut labels = BTreeMap::new();
    let mut files = Vec::new();
    for output in &config.outputs {
        let Some(file) = output.label_filename.as_deref() else { continue };
        let refuse =
            |reason: String| RepositoryError::Labels { model: model.to_string(), output: output.name.clone(), reason };
        let inside = !file.starts_with('/')
            && !file.contains('\\')
            && file.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !inside {
            return Err(refuse(format!(
                "label_filename `{file}` must be a relative path inside the model directory {location}"
            )));
        }
        let rel = format!("{prefix}{file}");
        let missing = || refuse(format!("label_filename `{file}` does not exist in {location}"));
        let info = listed.iter().find(|f| f.path == rel).ok_or_else(missing)?;
        let bytes = root.files.read(&rel).await?.ok_or_else(missing)?;
        labels.insert(output.name.clone(), parse_labels(&bytes));
        files.push(info.clone());
    }
    Ok((labels, files))
}

/// One label per line, as Triton reads a label file (`std::getline`: no entry after a final newline); a line's
/// trailing `\r` (a file written on Windows) is not part of its label.
pub fn parse_labels(bytes: &[u8]) -> Labels {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Arc::from(Vec::new());
    }
    body.split(|&b| b == b'\n')
        .map(|line| Bytes::copy_from_slice(line.strip_suffix(b"\r").unwrap_or(line)))
        .collect::<Vec<_>>()
        .into()
}

fn version_source(version: u64, rel: String, listed: Vec<FileInfo>, config_print: u64) -> VersionSource {
    let skip = if rel.is_empty() { 0 } else { rel.len() + 1 };
    let files = listed.iter().map(|f| f.path[skip..].to_string()).collect();
    let mut hasher = std::hash::DefaultHasher::new();
    (config_print, fingerprint(&listed)).hash(&mut hasher);
    VersionSource { version, files, fingerprint: hasher.finish(), listed, rel }
}

/// A hash of paths, sizes and change tags: equal listings, equal fingerprints.
fn fingerprint(files: &[FileInfo]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for f in files {
        (&f.path, f.size, &f.tag).hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferroserve-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn local(root: &Path) -> Repository {
        Repository::new(vec![Root::models(Files::open(&root.to_string_lossy(), Default::default()).unwrap())])
    }

    #[tokio::test]
    async fn scans_versions_and_config() {
        let root = temp_dir("scan");
        write(&root.join("a/1/model.onnx"), b"1");
        write(&root.join("a/10/model.onnx"), b"10");
        write(&root.join("a/notaversion/x"), b"");
        write(&root.join("a/config.pbtxt"), b"max_batch_size: 4");
        write(&root.join("b/2/model.onnx"), b"");
        write(&root.join("b/config.pbtxt"), b"name: \"other\"");
        let repo = local(&root);
        assert_eq!(repo.model_names().await.unwrap(), ["a", "b"]);
        let a = repo.read_model("a", None).await.unwrap();
        assert_eq!(a.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 10]);
        assert_eq!(a.versions[0].files, ["model.onnx"]);
        assert_eq!(a.config.max_batch_size, Some(4));
        let dirs = repo.fetch(&a, &[10]).await.unwrap();
        assert_eq!(std::fs::read(dirs[&10].join("model.onnx")).unwrap(), b"10");
        assert!(matches!(repo.read_model("b", None).await, Err(RepositoryError::NameMismatch { .. })));
        assert!(matches!(repo.read_model("zzz", None).await, Err(RepositoryError::UnknownModel(_))));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn fingerprints_change_only_with_the_files_they_cover() {
        let root = temp_dir("print");
        write(&root.join("m/1/model.onnx"), b"one");
        write(&root.join("m/2/model.onnx"), b"two");
        let repo = local(&root);
        let before = repo.read_model("m", None).await.unwrap();
        write(&root.join("m/2/model.onnx"), b"two, changed");
        let after = repo.read_model("m", None).await.unwrap();
        assert_eq!(before.versions[0].fingerprint, after.versions[0].fingerprint);
        assert_ne!(before.versions[1].fingerprint, after.versions[1].fingerprint);
        assert_ne!(before.fingerprint, after.fingerprint);
        assert_eq!(repo.fingerprint("m").await.unwrap(), after.fingerprint);
        write(&root.join("other/1/model.onnx"), b"x");
        let all = repo.fingerprints().await.unwrap();
        assert_eq!(all["m"], after.fingerprint, "one listing gives the same fingerprints as one per model");
        assert_eq!(all["other"], repo.fingerprint("other").await.unwrap());
        std::fs::create_dir_all(root.join("empty")).unwrap();
        assert_eq!(repo.fingerprints().await.unwrap()["empty"], repo.fingerprint("empty").await.unwrap());
        write(&root.join("m/config.pbtxt"), b"max_batch_size: 2");
        let configured = repo.read_model("m", None).await.unwrap();
        assert_ne!(configured.versions[0].fingerprint, after.versions[0].fingerprint);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn single_model_dir_without_versions_is_version_1() {
        let dir = temp_dir("single");
        write(&dir.join("model.onnx"), b"x");
        let repo = Repository::new(vec![Root::single_model(
            "m".into(),
            Files::open(&dir.to_string_lossy(), Default::default()).unwrap(),
        )]);
        assert_eq!(repo.model_names().await.unwrap(), ["m"]);
        let m = repo.read_model("m", None).await.unwrap();
        assert_eq!(m.versions.len(), 1);
        assert_eq!((m.versions[0].version, m.versions[0].files.clone()), (1, vec!["model.onnx".to_string()]));
        assert_eq!(repo.fetch(&m, &[1]).await.unwrap()[&1], dir);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same layout through object storage (object_store's in-memory store): listed through the store,
    /// fetched into the cache, only the versions asked for.
    #[tokio::test]
    async fn reads_and_fetches_through_an_object_store() {
        use object_store::ObjectStore;
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        for (path, bytes) in [
            ("repo/a/config.pbtxt", &b"max_batch_size: 4"[..]),
            ("repo/a/1/model.onnx", b"one"),
            ("repo/a/2/model.onnx", b"two"),
            ("repo/b/3/model.onnx", b"three"),
            ("repo/.hidden/1/model.onnx", b""),
        ] {
            store.put_opts(&path.into(), bytes.to_vec().into(), Default::default()).await.unwrap();
        }
        let cache = temp_dir("memory-cache");
        let options = ferroserve_storage::StorageOptions { cache_dir: cache.clone(), ..Default::default() };
        let storage = ferroserve_storage::Storage::from_store(store, "repo", "memory://repo", options);
        let repo = Repository::new(vec![Root::models(Files::new(storage))]);
        assert_eq!(repo.model_names().await.unwrap(), ["a", "b"]);
        let a = repo.read_model("a", None).await.unwrap();
        assert_eq!(a.config.max_batch_size, Some(4));
        assert_eq!(a.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
        let dirs = repo.fetch(&a, &[2]).await.unwrap();
        assert!(dirs[&2].starts_with(&cache));
        assert_eq!(std::fs::read(dirs[&2].join("model.onnx")).unwrap(), b"two");
        assert!(!dirs[&2].parent().unwrap().join("1/model.onnx").exists(), "version 1 was not asked for");
        std::fs::remove_dir_all(cache).unwrap();
    }

    const LABELLED: &[u8] =
        b"output [ { name: \"OUT\" data_type: TYPE_FP32 dims: [ 3 ] label_filename: \"labels.txt\" } ]";

    fn label_text(labels: &Labels) -> Vec<&[u8]> {
        labels.iter().map(|l| &l[..]).collect()
    }

    #[test]
    fn label_files_are_read_one_label_per_line() {
        assert_eq!(label_text(&parse_labels(b"cat\ndog\r\n\nbird\n")), [&b"cat"[..], b"dog", b"", b"bird"]);
        assert_eq!(label_text(&parse_labels(b"cat\ndog")), [&b"cat"[..], b"dog"]);
        assert!(parse_labels(b"").is_empty());
    }

    #[tokio::test]
    async fn reads_label_files_beside_the_config() {
        let root = temp_dir("labels");
        write(&root.join("m/1/model.onnx"), b"");
        write(&root.join("m/config.pbtxt"), LABELLED);
        write(&root.join("m/labels.txt"), b"zero\none\ntwo\n");
        let repo = local(&root);
        let m = repo.read_model("m", None).await.unwrap();
        assert_eq!(label_text(&m.labels["OUT"]), [&b"zero"[..], b"one", b"two"]);
        assert_eq!(m.versions[0].files, ["model.onnx"], "the label file is the model's, not a version's");
        // New labels change what the versions answer: their fingerprint changes as for a new config.
        write(&root.join("m/labels.txt"), b"zero\none\ntwo\nthree\n");
        let relabelled = repo.read_model("m", None).await.unwrap();
        assert_ne!(relabelled.versions[0].fingerprint, m.versions[0].fingerprint);
        // A missing file fails the model's load, naming the output and the file.
        std::fs::remove_file(root.join("m/labels.txt")).unwrap();
        let error = repo.read_model("m", None).await.unwrap_err().to_string();
        assert!(error.contains("output `OUT`") && error.contains("`labels.txt` does not exist"), "{error}");
        // The same for a load's config override; and a name outside the model directory is refused.
        let escaping = ModelConfig::from_pbtxt(
            "output [ { name: \"OUT\" data_type: TYPE_FP32 dims: [ 3 ] label_filename: \"../m/config.pbtxt\" } ]",
        )
        .unwrap();
        let error = repo.read_model("m", Some((&escaping, ""))).await.unwrap_err().to_string();
        assert!(error.contains("inside the model directory"), "{error}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn reads_label_files_through_an_object_store() {
        use object_store::ObjectStore;
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        for (path, bytes) in [
            ("repo/m/config.pbtxt", LABELLED),
            ("repo/m/labels.txt", b"zero\none\ntwo"),
            ("repo/m/1/model.onnx", b""),
            ("repo/n/config.pbtxt", LABELLED),
            ("repo/n/1/model.onnx", b""),
        ] {
            store.put_opts(&path.into(), bytes.to_vec().into(), Default::default()).await.unwrap();
        }
        let cache = temp_dir("labels-cache");
        let options = ferroserve_storage::StorageOptions { cache_dir: cache.clone(), ..Default::default() };
        let storage = ferroserve_storage::Storage::from_store(store, "repo", "memory://repo", options);
        let repo = Repository::new(vec![Root::models(Files::new(storage))]);
        let m = repo.read_model("m", None).await.unwrap();
        assert_eq!(label_text(&m.labels["OUT"]), [&b"zero"[..], b"one", b"two"]);
        let error = repo.read_model("n", None).await.unwrap_err().to_string();
        assert!(error.contains("`labels.txt` does not exist in memory://repo/n"), "{error}");
        std::fs::remove_dir_all(cache).unwrap();
    }

    #[tokio::test]
    async fn several_roots_and_duplicates() {
        let (one, two) = (temp_dir("root1"), temp_dir("root2"));
        write(&one.join("a/1/model.onnx"), b"");
        write(&two.join("b/1/model.onnx"), b"");
        write(&two.join("a/1/model.onnx"), b"");
        let repo = Repository::new(vec![
            Root::models(Files::open(&one.to_string_lossy(), Default::default()).unwrap()),
            Root::models(Files::open(&two.to_string_lossy(), Default::default()).unwrap()),
        ]);
        assert_eq!(repo.model_names().await.unwrap(), ["a", "b"]);
        assert!(repo.read_model("b", None).await.is_ok());
        assert!(matches!(repo.read_model("a", None).await, Err(RepositoryError::Duplicate { .. })));
        let missing = Repository::new(vec![Root::models(
            Files::open(&one.join("nope").to_string_lossy(), Default::default()).unwrap(),
        )]);
        assert!(missing.model_names().await.is_err());
        std::fs::remove_dir_all(one).unwrap();
        std::fs::remove_dir_all(two).unwrap();
    }
}
