use super::*;

/// A pid no process has right now.
pub(crate) fn dead_pid() -> i32 {
    (999_999..)
        .find(|p| !pid_alive(*p))
        .expect("some pid is free")
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn port() -> &'static Path {
    Path::new("/dev/ttyUSB7")
}

#[test]
fn pids_parse_in_ascii_padded_and_binary_formats() {
    assert_eq!(parse_pid(b"      1234\n"), Some(1234));
    assert_eq!(parse_pid(b"1234"), Some(1234));
    assert_eq!(parse_pid(b"  42\0\0"), Some(42));
    assert_eq!(parse_pid(&4321i32.to_ne_bytes()), Some(4321));
    assert_eq!(parse_pid(b""), None);
    assert_eq!(parse_pid(b"hello"), None);
    assert_eq!(parse_pid(b"0"), None);
    assert_eq!(parse_pid(&(-5i32).to_ne_bytes()), None);
}

#[test]
fn our_lock_is_in_the_hdb_format_and_removed_on_drop() {
    let d = dir();
    let lock = match acquire(&[d.path().to_path_buf()], port()).expect("ok") {
        Acquired::Locked(l) => l,
        other => panic!("expected our lock, got {other:?}"),
    };
    let path = d.path().join("LCK..ttyUSB7");
    assert_eq!(lock.path(), path);
    let text = fs::read_to_string(&path).expect("lock file exists");
    assert_eq!(text, format!("{:>10}\n", std::process::id()));
    assert_eq!(text.len(), 11);
    drop(lock);
    assert!(!path.exists());
    let leftovers: Vec<_> = fs::read_dir(d.path()).expect("dir").collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn a_lock_of_a_live_process_in_any_directory_is_held() {
    let (a, b) = (dir(), dir());
    let path = b.path().join("LCK..ttyUSB7");
    fs::write(&path, format_pid(own_pid())).expect("write");
    let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
    match acquire(&dirs, port()).expect("ok") {
        Acquired::Held { path: p, holder } => {
            assert_eq!(p, path);
            assert_eq!(holder, Holder::Pid(own_pid()));
        }
        other => panic!("expected held, got {other:?}"),
    }
    assert!(path.exists(), "someone else's lock must stay");
    assert!(!a.path().join("LCK..ttyUSB7").exists());
}

#[test]
fn a_stale_lock_is_replaced_by_ours() {
    for content in [
        format_pid(dead_pid()).into_bytes(),
        dead_pid().to_ne_bytes().to_vec(),
    ] {
        let d = dir();
        let path = d.path().join("LCK..ttyUSB7");
        fs::write(&path, content).expect("write");
        let lock = acquire(&[d.path().to_path_buf()], port()).expect("ok");
        assert!(matches!(lock, Acquired::Locked(_)), "{lock:?}");
        assert_eq!(parse_pid(&fs::read(&path).expect("ours")), Some(own_pid()));
    }
}

#[test]
fn an_unreadable_lock_is_held_while_young_and_stale_when_old() {
    let d = dir();
    let path = d.path().join("LCK..ttyUSB7");
    fs::write(&path, b"garbage").expect("write");
    let dirs = [d.path().to_path_buf()];
    let held = acquire(&dirs, port()).expect("ok");
    assert!(
        matches!(
            held,
            Acquired::Held {
                holder: Holder::Unknown,
                ..
            }
        ),
        "{held:?}"
    );
    let old = std::time::SystemTime::now() - UNREADABLE_GRACE - Duration::from_secs(1);
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(old))
        .expect("age the file");
    let taken = acquire(&dirs, port()).expect("ok");
    assert!(matches!(taken, Acquired::Locked(_)), "{taken:?}");
}

#[test]
fn without_a_lock_directory_the_port_is_probed_unlocked() {
    let d = dir();
    let missing = d.path().join("nope");
    let r = acquire(&[missing], port()).expect("ok");
    assert!(matches!(r, Acquired::Unlocked { .. }), "{r:?}");
}

#[test]
fn a_lock_that_is_no_longer_ours_is_not_removed_on_drop() {
    let d = dir();
    let lock = match acquire(&[d.path().to_path_buf()], port()).expect("ok") {
        Acquired::Locked(l) => l,
        other => panic!("expected our lock, got {other:?}"),
    };
    fs::write(lock.path(), format_pid(1)).expect("overwrite");
    let path = lock.path().to_path_buf();
    drop(lock);
    assert!(path.exists());
}
