use std::os::unix::fs::PermissionsExt;

use super::*;

const PLAIN: Unpack = Unpack {
    owners: false,
    special_bits: false,
};

/// A tree: `src/a.txt`, `src/sub/b.txt` (mode 4755), `src/link -> a.txt`.
fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), "alpha").unwrap();
    fs::write(src.join("sub/b.txt"), "beta").unwrap();
    fs::set_permissions(src.join("sub/b.txt"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    src
}

fn archive(src: &Path, contents: bool) -> Vec<u8> {
    let mut out = Vec::new();
    pack(src, contents, &mut out).unwrap();
    out
}

fn copy(src: &Path, contents: bool, dest: &str) -> Result<(), CopyError> {
    unpack(&archive(src, contents)[..], dest, contents, PLAIN)
}

fn text(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn a_folder_goes_into_an_existing_folder_or_becomes_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let src = tree(d.path());
    let into = d.path().join("into");
    fs::create_dir(&into).unwrap();
    copy(&src, false, into.to_str().unwrap()).unwrap();
    assert_eq!(text(&into.join("src/sub/b.txt")), "beta");
    assert_eq!(
        fs::read_link(into.join("src/link")).unwrap(),
        Path::new("a.txt")
    );
    // The set-user-ID bit is cleared unless asked for.
    let mode = fs::metadata(into.join("src/sub/b.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);

    let new = d.path().join("new");
    copy(&src, false, new.to_str().unwrap()).unwrap();
    assert_eq!(text(&new.join("a.txt")), "alpha");
    assert!(!new.join("src").exists());

    // DIR/. : what it holds, into a folder made for it.
    let spread = d.path().join("spread");
    copy(&src, true, spread.to_str().unwrap()).unwrap();
    assert_eq!(text(&spread.join("sub/b.txt")), "beta");
    copy(&src, true, spread.to_str().unwrap()).unwrap();
}

#[test]
fn a_file_lands_in_a_folder_or_takes_the_destinations_name() {
    let d = tempfile::tempdir().unwrap();
    let src = tree(d.path());
    let file = src.join("a.txt");
    copy(&file, false, d.path().to_str().unwrap()).unwrap();
    assert_eq!(text(&d.path().join("a.txt")), "alpha");
    let renamed = d.path().join("renamed.txt");
    copy(&file, false, renamed.to_str().unwrap()).unwrap();
    assert_eq!(text(&renamed), "alpha");
    // Over an existing file, and over a link (the link goes, its target
    // stays as it was).
    fs::write(d.path().join("elsewhere"), "keep").unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join("ln")).unwrap();
    copy(&src.join("sub/b.txt"), false, renamed.to_str().unwrap()).unwrap();
    assert_eq!(text(&renamed), "beta");
    copy(&file, false, d.path().join("ln").to_str().unwrap()).unwrap();
    assert_eq!(text(&d.path().join("elsewhere")), "keep");
    assert_eq!(text(&d.path().join("ln")), "alpha");
}

#[test]
fn what_docker_refuses_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = tree(d.path());
    let missing = d.path().join("nope/");
    let err = copy(&src.join("a.txt"), false, missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, CopyError::NotAFolder(_)), "{err}");
    let err = copy(&src, false, src.join("a.txt").to_str().unwrap()).unwrap_err();
    assert!(matches!(err, CopyError::FolderOntoFile(_)), "{err}");
    let deep = d.path().join("no/such/place");
    let err = copy(&src, false, deep.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, CopyError::Missing(_)), "{err}");
    let err = pack(&d.path().join("absent"), false, Vec::new()).unwrap_err();
    assert!(matches!(err, CopyError::Missing(_)), "{err}");
    let err = unpack(&[0u8; 1024][..], d.path().to_str().unwrap(), false, PLAIN).unwrap_err();
    assert!(matches!(err, CopyError::Empty), "{err}");
    // A file where a folder is, inside the destination: the folder stays.
    let dest = d.path().join("dest");
    fs::create_dir_all(dest.join("a.txt/keep")).unwrap();
    let err = copy(&src.join("a.txt"), false, dest.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, CopyError::Mismatch { .. }), "{err}");
    assert!(dest.join("a.txt/keep").is_dir());
}

/// An archive with raw entries, as a hostile peer would write it.
fn raw(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_gnu_mut().unwrap().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        if kind.is_symlink() || kind.is_hard_link() {
            h.set_link_name(body).unwrap();
            h.set_size(0);
        } else {
            h.set_size(body.len() as u64);
        }
        h.set_cksum();
        let data: &[u8] = if kind.is_file() { body.as_bytes() } else { b"" };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn a_hostile_archive_lands_nothing_outside() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let file = tar::EntryType::Regular;
    let cases: Vec<Vec<u8>> = vec![
        raw(&[("x/../../escaped", file, "a")]),
        raw(&[("/abs", file, "a")]),
        // A link the archive makes, then a file through it.
        raw(&[
            ("top", tar::EntryType::Directory, ""),
            ("top/ln", tar::EntryType::Symlink, outside.to_str().unwrap()),
            ("top/ln/escaped", file, "a"),
        ]),
        raw(&[("hard", tar::EntryType::Link, "/etc/passwd")]),
        raw(&[("dev", tar::EntryType::Char, "")]),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let err = unpack(&bytes[..], dest.to_str().unwrap(), true, PLAIN).unwrap_err();
        assert!(
            matches!(err, CopyError::Outside(_) | CopyError::Unsupported { .. }),
            "case {i}: {err}"
        );
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!d.path().join("escaped").exists() && !Path::new("/abs").exists());
}

#[test]
fn a_read_only_folder_is_filled_before_it_is_made_read_only() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("ro");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o555)).unwrap();
    let dest = d.path().join("copy");
    copy(&src, false, dest.to_str().unwrap()).unwrap();
    assert_eq!(text(&dest.join("f")), "x");
    let mode = fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o555);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn contents_is_written_dir_dot() {
    assert!(is_contents("/data/.") && is_contents("."));
    assert!(!is_contents("/data") && !is_contents("/data/.hidden"));
}
