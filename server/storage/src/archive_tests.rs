//! Unpacking tar.gz, tar and zip archives made here, and rejecting entries that escape the destination.

use super::*;
use std::io::Write;

fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `set_path` refuses `..`; write the raw name so the zip-slip case can be built.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (path, data) in entries {
        writer.start_file(*path, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

const TREE: &[(&str, &[u8])] =
    &[("m/config.pbtxt", b"name: \"m\""), ("m/1/model.onnx", b"onnx-bytes-v1"), ("m/2/model.onnx", b"v2")];

fn check_tree(dest: &FsPath) {
    for (path, data) in TREE {
        assert_eq!(std::fs::read(dest.join(path)).unwrap(), *data, "{path}");
    }
}

/// Not cancelled.
static GOING: AtomicBool = AtomicBool::new(false);

fn write(dir: &FsPath, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn unpacks_tar_gz_tar_and_zip() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (ArchiveKind::TarGz, write(tmp.path(), "a.tar.gz", &gzip(&tar_bytes(TREE)))),
        (ArchiveKind::Tar, write(tmp.path(), "a.tar", &tar_bytes(TREE))),
        (ArchiveKind::Zip, write(tmp.path(), "a.zip", &zip_bytes(TREE))),
    ];
    for (i, (kind, archive)) in cases.iter().enumerate() {
        let dest = tmp.path().join(format!("out{i}"));
        unpack(*kind, archive, &dest, "http://host/a", &GOING).unwrap();
        check_tree(&dest);
    }
}

#[test]
fn rejects_zip_slip() {
    let tmp = tempfile::tempdir().unwrap();
    let evil: &[(&str, &[u8])] = &[("ok.txt", b"ok"), ("../evil.txt", b"pwned")];
    let cases = [
        (ArchiveKind::Zip, write(tmp.path(), "evil.zip", &zip_bytes(evil))),
        (ArchiveKind::TarGz, write(tmp.path(), "evil.tgz", &gzip(&tar_bytes(evil)))),
    ];
    for (kind, archive) in cases {
        let dest = tmp.path().join("out").join("inner");
        let error = unpack(kind, &archive, &dest, "http://host/evil", &GOING).expect_err("must reject");
        assert!(matches!(error, StorageError::Archive { .. }), "{error}");
        assert!(error.to_string().contains("escapes the destination"), "{error}");
        assert!(!tmp.path().join("out").join("evil.txt").exists());
    }
    let absolute: &[(&str, &[u8])] = &[("/etc/evil", b"x")];
    let archive = write(tmp.path(), "abs.zip", &zip_bytes(absolute));
    assert!(unpack(ArchiveKind::Zip, &archive, &tmp.path().join("abs"), "l", &GOING).is_err());
}

#[test]
fn rejects_corrupt_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = write(tmp.path(), "bad.tgz", b"definitely not gzip");
    let error = unpack(ArchiveKind::TarGz, &archive, &tmp.path().join("o"), "l", &GOING).unwrap_err();
    assert!(matches!(error, StorageError::Archive { .. }), "{error}");
    let archive = write(tmp.path(), "bad.zip", b"PK nope");
    assert!(matches!(
        unpack(ArchiveKind::Zip, &archive, &tmp.path().join("z"), "l", &GOING),
        Err(StorageError::Archive { .. })
    ));
}

#[test]
fn a_cancelled_unpack_stops_at_its_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let cancelled = AtomicBool::new(true);
    for (kind, name, bytes) in [
        (ArchiveKind::TarGz, "a.tgz", gzip(&tar_bytes(TREE))),
        (ArchiveKind::Tar, "a.tar", tar_bytes(TREE)),
        (ArchiveKind::Zip, "a.zip", zip_bytes(TREE)),
    ] {
        let archive = write(tmp.path(), name, &bytes);
        let dest = tmp.path().join(format!("{name}.out"));
        let error = unpack(kind, &archive, &dest, "l", &cancelled).unwrap_err();
        assert!(matches!(error, StorageError::Archive { .. }), "{error}");
        assert!(TREE.iter().all(|(path, _)| !dest.join(path).exists()), "{name}: nothing unpacked");
    }
}

#[test]
fn placing_a_tree_keeps_one_unpacked_first_by_another_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, dir) = (tmp.path().join(".unpack-v-1"), tmp.path().join("v"));
    std::fs::create_dir_all(staging.join("m")).unwrap();
    std::fs::create_dir_all(dir.join("m")).unwrap();
    std::fs::write(dir.join("m/theirs"), b"first").unwrap();
    std::fs::write(staging.join("m/ours"), b"second").unwrap();
    place(&staging, &dir).unwrap();
    assert!(!staging.exists(), "our staging tree is removed");
    assert!(dir.join("m/theirs").exists() && !dir.join("m/ours").exists());
}
