//! The tch range (issue 28): Cargo.toml's requirement, build.rs's table of tch releases and
//! their libtorch, and the `cfg`s this build was given, all agree.

#[path = "../build/releases.rs"]
#[allow(dead_code)]
mod releases;

use releases::{is_release, tch_for_libtorch, tch_minor, FLOAT8_FROM, RELEASES};

#[test]
fn cargo_toml_asks_for_the_range_of_the_table() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let (first, last) = (RELEASES[0].0, RELEASES[RELEASES.len() - 1].0);
    let want = format!("\">=0.{first}, <0.{}\"", last + 1);
    for dep in ["tch", "torch-sys"] {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{dep} = ")))
            .unwrap_or_else(|| panic!("no {dep} in Cargo.toml"));
        assert_eq!(line, format!("{dep} = {want}"));
    }
}

#[test]
fn each_libtorch_release_names_its_tch() {
    assert_eq!(tch_for_libtorch("2.4.0"), Some(17));
    assert_eq!(tch_for_libtorch("2.4.1+cu121"), Some(17));
    assert_eq!(tch_for_libtorch("2.5.1"), Some(18));
    assert_eq!(tch_for_libtorch("2.10.0+cpu"), Some(23));
    assert_eq!(tch_for_libtorch("2.11.0+cu130"), Some(24));
    // No tch is made for 2.8 (there is no tch 0.21), nor for releases outside the range.
    for none in ["2.8.0", "2.3.1", "2.12.0", "2.40.0", "2.1", ""] {
        assert_eq!(tch_for_libtorch(none), None, "{none}");
    }
    assert!(is_release("2.11", "2.11") && !is_release("2.110.0", "2.11"));
    assert_eq!(tch_minor("0.17"), Some(17));
    assert_eq!(tch_minor("0.24.0"), Some(24));
    assert_eq!(tch_minor("0.21"), None);
    assert_eq!(tch_minor("1.17"), None);
}

#[test]
fn this_build_has_the_cfgs_of_its_tch() {
    let minor = tch_minor(env!("TCH_STATE_DICT_TCH")).expect("build.rs names a tch of the range");
    assert_eq!(cfg!(tch_float8), minor >= FLOAT8_FROM, "tch 0.{minor}");
}
