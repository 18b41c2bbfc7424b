//! Saves replace the file whole or not at all: concurrent saves, symlinks at temporary names,
//! permissions, debris of crashed saves, and paths that cannot be written.

mod common;

use common::tempdir;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{Error, StateDict, Value};

/// A state dict of `tensors` tensors of `numel` floats, every element `value`.
fn filled(value: f64, tensors: usize, numel: i64) -> StateDict {
    let mut sd = StateDict::new();
    for i in 0..tensors {
        sd.insert(
            format!("layer{i}.weight"),
            Tensor::full([numel], value, (Kind::Float, Device::Cpu)),
        );
    }
    sd
}

/// The one value every element of every tensor of `sd` holds, or `None` for a mix.
fn uniform_value(sd: &StateDict) -> Option<f64> {
    let mut seen = None;
    for t in sd.values() {
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        if lo != hi || seen.is_some_and(|v| v != lo) {
            return None;
        }
        seen = Some(lo);
    }
    seen
}

/// Files in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

#[test]
fn concurrent_saves_leave_one_whole_file() {
    let dir = tempdir("concurrent");
    let path = dir.join("model.pth");
    // Two saves of 8 tensors of 4 MiB each, from two threads at once: long enough to
    // overlap. (A state dict is Send, not Sync: each thread gets its own.)
    let both = |path: &Path| {
        let (a, b) = (filled(1.0, 8, 1 << 20), filled(2.0, 8, 1 << 20));
        std::thread::scope(|s| {
            let ha = s.spawn(move || a.save(path));
            let hb = s.spawn(move || b.save(path));
            (ha.join().unwrap(), hb.join().unwrap())
        })
    };
    for round in 0..4 {
        let (ra, rb) = both(&path);
        assert!(ra.is_ok() && rb.is_ok(), "round {round}: {ra:?} {rb:?}");
        let back = StateDict::load(&path).unwrap();
        assert_eq!(back.len(), 8, "round {round}");
        let value = uniform_value(&back);
        assert!(
            value == Some(1.0) || value == Some(2.0),
            "round {round}: the file mixes the two saves"
        );
        assert_eq!(others(&dir, &["model.pth"]), Vec::<String>::new());
    }
    // safetensors takes the same path.
    let path = dir.join("model.safetensors");
    let (ra, rb) = both(&path);
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    let value = uniform_value(&StateDict::load(&path).unwrap());
    assert!(value == Some(1.0) || value == Some(2.0));
}

#[cfg(unix)]
#[test]
fn a_symlink_at_a_temporary_name_is_not_followed() {
    let dir = tempdir("symlink");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let path = dir.join("model.pth");
    // The name that saves used before (`.{name}.{pid}.tmp`), and one of today's names, each
    // a symlink to the victim; today's is old enough to count as debris, but is no regular
    // file.
    let planted = [
        dir.join(format!(".model.pth.{}.tmp", std::process::id())),
        dir.join(".model.pth.tch-state-dict-AAAAAA.tmp"),
    ];
    for link in &planted {
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    filled(3.0, 2, 16).save(&path).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    for link in &planted {
        assert!(std::fs::symlink_metadata(link).unwrap().is_symlink());
    }
    assert_eq!(uniform_value(&StateDict::load(&path).unwrap()), Some(3.0));
}

#[cfg(unix)]
#[test]
fn the_target_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("mode");
    for (name, mode) in [("secret.pth", 0o600), ("shared.safetensors", 0o640)] {
        let path = dir.join(name);
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        filled(1.0, 1, 4).save(&path).unwrap();
        let found = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(found, mode, "{name}: {found:o}");
    }
    // A new file gets what `open(path, 'wb')` gives: 0666 less the umask, not 0600.
    let fresh = dir.join("fresh.pth");
    filled(1.0, 1, 4).save(&fresh).unwrap();
    std::fs::write(dir.join("reference"), b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&fresh), mode(&dir.join("reference")));
}

/// Sets a file's modification time `age` into the past.
fn age(path: &Path, age: Duration) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn debris_of_crashed_saves_is_removed_by_the_next_save() {
    let dir = tempdir("debris");
    let path = dir.join("model.pth");
    let stale = dir.join(".model.pth.tch-state-dict-Ab3xY9.tmp");
    let fresh = dir.join(".model.pth.tch-state-dict-Qr7pL2.tmp");
    let other_target = dir.join(".other.pth.tch-state-dict-Zz9zZ9.tmp");
    let not_ours = dir.join(".model.pth.tch-state-dict-notrandom.tmp");
    for p in [&stale, &fresh, &other_target, &not_ours] {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }
    for p in [&stale, &other_target, &not_ours] {
        age(p, Duration::from_secs(2 * 3600));
    }
    filled(1.0, 1, 4).save(&path).unwrap();
    assert!(!stale.exists(), "an old, unlocked temporary file is debris");
    // A fresh one may be a save in progress; another target's and foreign names are left.
    assert!(fresh.exists() && other_target.exists() && not_ours.exists());
    // Saving again and again leaves no files of its own behind.
    for _ in 0..3 {
        filled(2.0, 1, 4).save(&path).unwrap();
    }
    assert_eq!(
        others(&dir, &["model.pth"]),
        vec![
            ".model.pth.tch-state-dict-Qr7pL2.tmp",
            ".model.pth.tch-state-dict-notrandom.tmp",
            ".other.pth.tch-state-dict-Zz9zZ9.tmp",
        ]
    );
}

/// A save in progress in another process holds a lock on its temporary file: however old
/// the file, it is not debris.
#[cfg(unix)]
#[test]
fn a_locked_temporary_file_is_a_save_in_progress() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = tempdir("locked");
    let path = dir.join("model.pth");
    let busy = dir.join(".model.pth.tch-state-dict-Busy01.tmp");
    std::fs::write(&busy, b"half written").unwrap();
    age(&busy, Duration::from_secs(2 * 3600));
    let mut holder = Command::new(common::python())
        .args([
            "-c",
            "import fcntl, sys\n\
             f = open(sys.argv[1], 'rb')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
            busy.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    filled(1.0, 1, 4).save(&path).unwrap();
    assert!(busy.exists(), "a locked temporary file was removed");
    // Once its process is gone, the lock is gone, and the file is debris.
    holder.stdin.take().unwrap().write_all(b"").unwrap();
    assert!(holder.wait().unwrap().success());
    filled(1.0, 1, 4).save(&path).unwrap();
    assert!(!busy.exists());
}

#[test]
fn saving_over_a_directory_is_refused() {
    let dir = tempdir("isdir");
    let path = dir.join("model.pth");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), b"kept").unwrap();
    let e = filled(1.0, 1, 4).save(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Unwritable { path: p, .. } if *p == path),
        "{e:?}"
    );
    let e = Value::Int(1).save(&path).unwrap_err();
    assert!(matches!(e, Error::Unwritable { .. }), "{e:?}");
    assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
    assert_eq!(others(&dir, &["model.pth"]), Vec::<String>::new());
}

#[test]
fn saving_where_no_file_can_be_made_is_an_io_error() {
    let dir = tempdir("unwritable");
    // A parent that is a file.
    std::fs::write(dir.join("file"), b"").unwrap();
    let e = filled(1.0, 1, 4)
        .save(dir.join("file").join("model.pth"))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    // A directory without write permission; for root, which ignores modes, /sys, which
    // refuses new files to root too: with PermissionDenied where sysfs is mounted read-write,
    // ReadOnlyFilesystem where it is mounted read-only (in many containers). Either is the
    // I/O error of a place where no file can be made.
    #[cfg(unix)]
    {
        use std::io::ErrorKind;
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let target = if std::fs::write(locked.join("probe"), b"").is_ok() {
            PathBuf::from("/sys/tch-state-dict-test.pth")
        } else {
            locked.join("model.pth")
        };
        let e = filled(1.0, 1, 4).save(&target).unwrap_err();
        eprintln!("saving to {}: {e}", target.display());
        assert!(
            matches!(&e, Error::Io { source, .. }
                if matches!(source.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem)),
            "{e:?}"
        );
        assert!(!target.exists());
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn a_failed_save_leaves_the_old_file_and_no_temporary_file() {
    let dir = tempdir("failed");
    let path = dir.join("model.pth");
    filled(1.0, 2, 16).save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = filled(2.0, 2, 16);
    bad.insert("undefined", Tensor::new());
    let e = bad.save(&path).unwrap_err();
    assert!(matches!(e, Error::Unwritable { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(others(&dir, &["model.pth"]), Vec::<String>::new());
}
