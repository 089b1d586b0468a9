//! Triton's system shared-memory extension: clients on the same host register POSIX shared-memory
//! objects (`shm_open` keys, found under `/dev/shm`) as named regions, then name a region, an offset and a
//! byte size in place of an input's data or as the destination of an output.
//!
//! Reads and writes go through `pread`/`pwrite` on the object's file descriptor, never through a mapping:
//! a client that shrinks or removes its object while a request uses it then gets a short read, which is
//! answered as a client error, where a mapping would take the whole server down with SIGBUS. The copy this
//! costs is the one a mapping would cost too (the tensor is copied into the request either way).
//!
//! Registering a region gives the caller read and write access to a shared-memory object as this server's
//! user, so registration and unregistration are admin operations (`--admin-token`, `--disable-admin-api`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ferroserve_engine::{InferError, Parameter, Parameters};
use ferroserve_runtime::{DataType, Tensor};

/// Where `shm_open` keeps its objects on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Why CUDA shared-memory calls are refused.
pub const NO_CUDA_SHARED_MEMORY: &str = "CUDA shared memory is not supported by this server; use system shared memory or send the tensor data in the \
     request";

/// At most this many regions at once: each holds an open file descriptor, and a common soft limit on those
/// is 1024 for the whole process.
pub const MAX_REGIONS: usize = 256;

/// Longest region name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The tensor parameter naming a region.
pub const REGION: &str = "shared_memory_region";
/// The tensor parameter giving the byte size used in the region.
const BYTE_SIZE: &str = "shared_memory_byte_size";
/// The tensor parameter giving the offset into the region (default 0).
const OFFSET: &str = "shared_memory_offset";

/// What a client asked to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// The region's name, used by inference requests.
    pub name: String,
    /// The `shm_open` key of the object, such as `/input_simple`.
    pub key: String,
    /// Where the region starts in the object.
    pub offset: u64,
    /// How many bytes of the object, from `offset`, the region covers.
    pub byte_size: u64,
}

/// A registered region: its spec and the open object.
#[derive(Debug)]
pub struct Region {
    spec: RegionSpec,
    file: File,
}

impl Region {
    /// The region's registration.
    pub fn spec(&self) -> &RegionSpec {
        &self.spec
    }

    /// Checks that `[offset, offset + len)` lies inside the region and returns its position in the object.
    fn span(&self, offset: u64, len: u64, what: fmt::Arguments<'_>) -> Result<u64, InferError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.spec.byte_size => Ok(self.spec.offset + offset),
            _ => Err(InferError::invalid(format!(
                "{what} needs bytes {offset}..{} of shared memory region '{}', which has {} bytes",
                offset.saturating_add(len),
                self.spec.name,
                self.spec.byte_size
            ))),
        }
    }

    /// Copies `len` bytes at `offset` in the region out of it.
    pub fn read(&self, offset: u64, len: u64, what: fmt::Arguments<'_>) -> Result<Bytes, InferError> {
        let at = self.span(offset, len, what)?;
        let too_many = || InferError::invalid(format!("{what}: {len} bytes cannot be held"));
        let len = usize::try_from(len).map_err(|_| too_many())?;
        // An allocation that fails is a refused request, not an aborted server.
        let mut buffer = Vec::new();
        buffer.try_reserve_exact(len).map_err(|_| too_many())?;
        buffer.resize(len, 0);
        self.file.read_exact_at(&mut buffer, at).map_err(|e| self.io_error(what, &e))?;
        Ok(Bytes::from(buffer))
    }

    /// Writes `data` at `offset` in the region. Only the registered region is ever written: an object the
    /// client shrank since it registered is extended again, at most to the region's end (one `pwrite`, no
    /// extra `fstat` per output).
    pub fn write(&self, offset: u64, data: &[u8], what: fmt::Arguments<'_>) -> Result<(), InferError> {
        let at = self.span(offset, data.len() as u64, what)?;
        self.file.write_all_at(data, at).map_err(|e| self.io_error(what, &e))
    }

    fn io_error(&self, what: fmt::Arguments<'_>, e: &std::io::Error) -> InferError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            return self.shrunk(what, len);
        }
        InferError::invalid(format!("{what}: shared memory region '{}' cannot be used: {e}", self.spec.name))
    }

    fn shrunk(&self, what: fmt::Arguments<'_>, object_len: u64) -> InferError {
        InferError::invalid(format!(
            "{what}: the shared memory object '{}' of region '{}' now has {object_len} bytes, fewer than the region \
             registered ({} bytes at offset {})",
            self.spec.key, self.spec.name, self.spec.byte_size, self.spec.offset
        ))
    }
}

/// The regions registered with this server, by name.
#[derive(Debug)]
pub struct SharedMemory {
    dir: PathBuf,
    /// Most bytes one input may take from a region (the server's message limit: a tensor in shared memory is
    /// bounded as one in the body is).
    max_tensor_bytes: u64,
    regions: RwLock<HashMap<String, Arc<Region>>>,
}

impl Default for SharedMemory {
    fn default() -> Self {
        SharedMemory::new(SHM_DIR)
    }
}

impl SharedMemory {
    /// A registry whose keys name files in `dir` (`/dev/shm` in the server; a temporary directory in tests).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SharedMemory { dir: dir.into(), max_tensor_bytes: u64::MAX, regions: RwLock::new(HashMap::new()) }
    }

    /// Bounds what one input may take from a region (`--max-message-bytes` in the server).
    pub fn with_max_tensor_bytes(mut self, max: usize) -> Self {
        self.max_tensor_bytes = max as u64;
        self
    }

    /// Registers a region after checking the key and that the object holds the whole region.
    pub fn register(&self, spec: RegionSpec) -> Result<(), InferError> {
        if spec.name.is_empty() || spec.name.len() > MAX_NAME_BYTES {
            return Err(InferError::invalid(format!(
                "a shared memory region needs a name of 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        let path = object_path(&self.dir, &spec.key)?;
        if self.read_regions().contains_key(&spec.name) {
            return Err(already_registered(&spec.name));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                InferError::invalid(format!(
                    "unable to open shared memory region '{}' with key '{}': {e}",
                    spec.name, spec.key
                ))
            })?;
        let meta =
            file.metadata().map_err(|e| InferError::invalid(format!("shared memory key '{}': {e}", spec.key)))?;
        if !meta.is_file() {
            return Err(InferError::invalid(format!("shared memory key '{}' is not a shared memory object", spec.key)));
        }
        let fits = spec.offset.checked_add(spec.byte_size).is_some_and(|end| end <= meta.len());
        if !fits {
            return Err(InferError::invalid(format!(
                "shared memory region '{}' asks for {} bytes at offset {} of '{}', which has {} bytes",
                spec.name,
                spec.byte_size,
                spec.offset,
                spec.key,
                meta.len()
            )));
        }
        let mut regions = self.regions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if regions.contains_key(&spec.name) {
            return Err(already_registered(&spec.name));
        }
        if regions.len() >= MAX_REGIONS {
            return Err(InferError::Overloaded(format!(
                "{MAX_REGIONS} shared memory regions are registered already; unregister some first"
            )));
        }
        regions.insert(spec.name.clone(), Arc::new(Region { spec, file }));
        Ok(())
    }

    /// Unregisters one region, or all of them when `name` is empty. Requests already holding a region finish
    /// with it; unregistering a name that is not registered is not an error (as in Triton).
    pub fn unregister(&self, name: &str) {
        let mut regions = self.regions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
    }

    /// The registrations, sorted by name: all of them, or the one named (an error if it is not registered).
    pub fn status(&self, name: &str) -> Result<Vec<RegionSpec>, InferError> {
        let regions = self.read_regions();
        if name.is_empty() {
            let sorted: BTreeMap<_, _> = regions.iter().map(|(k, r)| (k.clone(), r.spec.clone())).collect();
            return Ok(sorted.into_values().collect());
        }
        regions.get(name).map(|r| vec![r.spec.clone()]).ok_or_else(|| unknown_region(name))
    }

    /// The region a tensor names, if it names one: `(region, offset, byte size)`.
    pub fn slot(&self, tensor: &str, parameters: &Parameters) -> Result<Option<Slot>, InferError> {
        let Some(region) = parameters.get(REGION) else {
            return Ok(None);
        };
        let Parameter::String(region) = region else {
            return Err(InferError::invalid(format!("tensor '{tensor}': {REGION} must be a string")));
        };
        let number = |key: &str| -> Result<Option<u64>, InferError> {
            match parameters.get(key) {
                None => Ok(None),
                Some(p) => p.as_u64().map(Some).ok_or_else(|| {
                    InferError::invalid(format!("tensor '{tensor}': {key} must be a non-negative integer"))
                }),
            }
        };
        let byte_size = number(BYTE_SIZE)?.ok_or_else(|| {
            InferError::invalid(format!("tensor '{tensor}' names shared memory region '{region}' without {BYTE_SIZE}"))
        })?;
        let offset = number(OFFSET)?.unwrap_or(0);
        let found = self.read_regions().get(region.as_str()).cloned().ok_or_else(|| unknown_tensor_region(region))?;
        found.span(offset, byte_size, format_args!("tensor '{tensor}'"))?;
        Ok(Some(Slot { region: found, offset, byte_size, max_tensor_bytes: self.max_tensor_bytes }))
    }

    fn read_regions(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Region>>> {
        self.regions.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Outputs a request asked to be written into shared memory, by output name.
pub type OutputSlots = HashMap<String, Slot>;

/// Bytes a decoded request holds because of shared memory, beyond what its body or message was charged: the
/// inputs read out of regions. Charged to `--max-inflight-bytes` once decoded and held until the answer is
/// built, so requests in flight cannot hold more through shared memory than through their bodies (an input was
/// read before its charge is refused, and is freed at once then). Outputs bound for regions are not charged:
/// their `shared_memory_byte_size` is only a capacity (often the whole region), and an output in the response
/// body is not charged either.
pub fn held_bytes(inputs: &[ferroserve_engine::InferInput]) -> usize {
    let read: u64 = inputs
        .iter()
        .filter(|i| i.parameters.contains_key(REGION))
        .filter_map(|i| i.parameters.get(BYTE_SIZE).and_then(Parameter::as_u64))
        .sum();
    usize::try_from(read).unwrap_or(usize::MAX)
}

/// Where in a region one tensor lives.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The region (kept alive for the request even if it is unregistered meanwhile).
    pub region: Arc<Region>,
    /// Offset into the region.
    pub offset: u64,
    /// Bytes of the region the tensor may use.
    pub byte_size: u64,
    max_tensor_bytes: u64,
}

impl Slot {
    /// The input of `datatype` and `shape` held here. Its size is checked before anything is read: a fixed-size
    /// datatype must take exactly its shape's bytes, and no input more than the server's message limit.
    pub fn read_tensor(&self, tensor: &str, datatype: DataType, shape: Vec<usize>) -> Result<Tensor, InferError> {
        if let Some(size) = datatype.size_of() {
            let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let needed = count.and_then(|n| n.checked_mul(size));
            if needed.is_none_or(|n| n as u64 != self.byte_size) {
                return Err(InferError::invalid(format!(
                    "input '{tensor}' of {datatype} shape {shape:?} needs {} bytes, but shared_memory_byte_size is {}",
                    needed.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                    self.byte_size
                )));
            }
        }
        if self.byte_size > self.max_tensor_bytes {
            return Err(InferError::invalid(format!(
                "input '{tensor}' takes {} bytes of shared memory, more than the limit of {} (--max-message-bytes)",
                self.byte_size, self.max_tensor_bytes
            )));
        }
        let raw = self.region.read(self.offset, self.byte_size, format_args!("input '{tensor}'"))?;
        crate::raw::tensor_from_raw(tensor, datatype, shape, raw)
    }

    /// Writes an output's bytes, refusing one larger than the slot.
    pub fn write(&self, tensor: &str, data: &[u8]) -> Result<(), InferError> {
        if data.len() as u64 > self.byte_size {
            // Triton's wording.
            return Err(InferError::invalid(format!(
                "shared memory size specified with the request for output '{tensor}' ({} bytes) should be at least {} \
                 bytes to hold the results",
                self.byte_size,
                data.len()
            )));
        }
        self.region.write(self.offset, data, format_args!("output '{tensor}'"))
    }
}

/// The file behind a `shm_open` key: one name in `dir`, with an optional leading `/`, as `shm_open` takes it.
fn object_path(dir: &Path, key: &str) -> Result<PathBuf, InferError> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_control());
    if bad {
        return Err(InferError::invalid(format!(
            "shared memory key '{}' is not a POSIX shared memory name (one name, optionally after a leading '/')",
            key.escape_debug()
        )));
    }
    Ok(dir.join(name))
}

// Triton's wordings and statuses (its shared memory manager: ALREADY_EXISTS for a name taken, NOT_FOUND for a
// name not registered, whether asked for by status or named by a tensor).
fn already_registered(name: &str) -> InferError {
    InferError::AlreadyExists(format!("shared memory region '{name}' already in manager"))
}

/// A CUDA region by name: there never is one.
pub fn unknown_cuda_region(name: &str) -> InferError {
    InferError::NotFound(format!("Unable to find cuda shared memory region: '{name}'"))
}

fn unknown_region(name: &str) -> InferError {
    InferError::NotFound(format!("Unable to find system shared memory region: '{name}'"))
}

fn unknown_tensor_region(name: &str) -> InferError {
    InferError::NotFound(format!("Unable to find shared memory region: '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(name: &str, contents: &[u8]) -> (tempdir::Dir, SharedMemory) {
        let dir = tempdir::Dir::new();
        std::fs::write(dir.path().join(name), contents).unwrap();
        let shm = SharedMemory::new(dir.path());
        (dir, shm)
    }

    /// A directory removed on drop (no extra dependency for one test module).
    mod tempdir {
        pub(super) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let path =
                    std::env::temp_dir().join(format!("ferroserve-shm-{}-{}", std::process::id(), fastrand::u64(..)));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn spec(name: &str, key: &str, offset: u64, byte_size: u64) -> RegionSpec {
        RegionSpec { name: name.into(), key: key.into(), offset, byte_size }
    }

    fn params(region: &str, size: u64, offset: Option<u64>) -> Parameters {
        let mut p = Parameters::new();
        p.insert(REGION.into(), Parameter::String(region.into()));
        p.insert(BYTE_SIZE.into(), Parameter::Uint(size));
        if let Some(o) = offset {
            p.insert(OFFSET.into(), Parameter::Uint(o));
        }
        p
    }

    #[test]
    fn reads_and_writes_inside_a_region_at_its_offset() {
        let (_dir, shm) = registry_with("obj", &(0u8..64).collect::<Vec<_>>());
        shm.register(spec("r", "/obj", 16, 32)).unwrap();
        let slot = shm.slot("x", &params("r", 8, Some(4))).unwrap().unwrap();
        assert_eq!(
            &slot.region.read(slot.offset, slot.byte_size, format_args!("x")).unwrap()[..],
            &[20, 21, 22, 23, 24, 25, 26, 27]
        );
        slot.write("y", &[9, 9]).unwrap();
        let again = shm.slot("x", &params("r", 2, Some(4))).unwrap().unwrap();
        let tensor = again.read_tensor("x", DataType::Uint8, vec![2]).unwrap();
        assert_eq!(tensor, Tensor::from_le_bytes(DataType::Uint8, vec![2], vec![9u8, 9]).unwrap());
        // Sizes are checked before anything is read: a fixed-size input takes exactly its shape's bytes, and no
        // input more than the limit.
        let e = again.read_tensor("x", DataType::Fp32, vec![1]).unwrap_err().to_string();
        assert!(e.contains("needs 4 bytes, but shared_memory_byte_size is 2"), "{e}");
        let e = again.read_tensor("x", DataType::Fp32, vec![usize::MAX, 2]).unwrap_err().to_string();
        assert!(e.contains("needs too many bytes"), "{e}");
        let limited = SharedMemory::new(_dir.path()).with_max_tensor_bytes(1);
        limited.register(spec("r", "/obj", 16, 32)).unwrap();
        let e = limited.slot("x", &params("r", 2, None)).unwrap().unwrap().read_tensor("x", DataType::Bytes, vec![1]);
        assert!(e.unwrap_err().to_string().contains("more than the limit of 1"));
        assert_eq!(shm.status("").unwrap(), vec![spec("r", "/obj", 16, 32)]);
        assert!(shm.slot("x", &Parameters::new()).unwrap().is_none());
    }

    #[test]
    fn refuses_what_falls_outside_a_region_or_names_none() {
        let (_dir, shm) = registry_with("obj", &[0u8; 64]);
        shm.register(spec("r", "obj", 0, 32)).unwrap();
        let err = |p: Parameters| shm.slot("x", &p).unwrap_err().to_string();
        assert!(err(params("r", 33, None)).contains("which has 32 bytes"));
        assert!(err(params("r", 8, Some(30))).contains("bytes 30..38"));
        assert!(err(params("r", 1, Some(u64::MAX))).contains("region 'r'"));
        assert!(err(params("nope", 1, None)).contains("Unable to find shared memory region: 'nope'"));
        let mut negative = params("r", 1, None);
        negative.insert(OFFSET.into(), Parameter::Int(-1));
        assert!(err(negative).contains("shared_memory_offset must be a non-negative integer"));
        let mut no_size = params("r", 1, None);
        no_size.remove(BYTE_SIZE);
        assert!(err(no_size).contains("without shared_memory_byte_size"));
        let slot = shm.slot("x", &params("r", 4, None)).unwrap().unwrap();
        assert!(slot.write("y", &[0; 5]).unwrap_err().to_string().contains("should be at least 5 bytes"));
    }

    #[test]
    fn registration_checks_keys_sizes_and_names() {
        let (dir, shm) = registry_with("obj", &[0u8; 16]);
        for key in ["/../etc/passwd", "../obj", "a/b", "", "/", "..", "/x\0y"] {
            let e = shm.register(spec("r", key, 0, 1)).unwrap_err().to_string();
            assert!(e.contains("not a POSIX shared memory name"), "{key}: {e}");
        }
        assert!(shm.register(spec("r", "/missing", 0, 1)).unwrap_err().to_string().contains("unable to open"));
        assert!(shm.register(spec("r", "/obj", 8, 9)).unwrap_err().to_string().contains("which has 16 bytes"));
        std::os::unix::fs::symlink(dir.path().join("obj"), dir.path().join("link")).unwrap();
        assert!(shm.register(spec("r", "/link", 0, 1)).is_err(), "a symlink is not followed");
        shm.register(spec("r", "/obj", 0, 16)).unwrap();
        assert!(shm.register(spec("r", "/obj", 0, 1)).unwrap_err().to_string().contains("already in manager"));
        shm.unregister("unknown");
        shm.unregister("r");
        assert!(shm.status("r").is_err());
        shm.register(spec("a", "/obj", 0, 1)).unwrap();
        shm.register(spec("b", "/obj", 1, 1)).unwrap();
        assert_eq!(shm.status("").unwrap().len(), 2);
        shm.unregister("");
        assert!(shm.status("").unwrap().is_empty());
    }

    #[test]
    fn an_object_shrunk_after_registration_is_a_client_error_not_a_crash() {
        let (dir, shm) = registry_with("obj", &[7u8; 64]);
        shm.register(spec("r", "/obj", 0, 64)).unwrap();
        let slot = shm.slot("x", &params("r", 64, None)).unwrap().unwrap();
        std::fs::OpenOptions::new().write(true).open(dir.path().join("obj")).unwrap().set_len(10).unwrap();
        assert!(
            slot.region
                .read(slot.offset, slot.byte_size, format_args!("x"))
                .unwrap_err()
                .to_string()
                .contains("now has 10 bytes")
        );
        // A write stays inside the registered region, extending the object again at most to the region's end.
        slot.write("y", &[1; 20]).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("obj")).unwrap().len(), 20);
        let end = shm.slot("x", &params("r", 1, Some(64))).unwrap_err().to_string();
        assert!(end.contains("bytes 64..65"), "{end}");
    }

    #[test]
    fn a_region_unregistered_mid_request_stays_usable_by_that_request() {
        let (_dir, shm) = registry_with("obj", &[3u8; 8]);
        shm.register(spec("r", "/obj", 0, 8)).unwrap();
        let slot = shm.slot("x", &params("r", 8, None)).unwrap().unwrap();
        shm.unregister("");
        assert_eq!(&slot.region.read(slot.offset, slot.byte_size, format_args!("x")).unwrap()[..], &[3u8; 8]);
        assert!(shm.slot("x", &params("r", 8, None)).is_err());
    }
}
