// The tch releases this crate supports and the libtorch each is made for: read by build.rs
// (`include!`) and by tests/tch_range.rs, which checks it against Cargo.toml's range.

/// Each tch minor release of the supported range with the libtorch release it is made for
/// (torch-sys's `TORCH_VERSION`: 0.18.1 is made for 2.5.1; there is no tch 0.21); any patch
/// release of that libtorch is accepted.
pub const RELEASES: [(u32, &str); 7] = [
    (17, "2.4"),
    (18, "2.5"),
    (19, "2.6"),
    (20, "2.7"),
    (22, "2.9"),
    (23, "2.10"),
    (24, "2.11"),
];

/// The newest tch of the range, with its libtorch.
pub const NEWEST: (u32, &str) = RELEASES[RELEASES.len() - 1];

/// The first tch with `Kind::Float8e5m2` and its kin (`cfg(tch_float8)`).
pub const FLOAT8_FROM: u32 = 19;

/// The tch minor release made for libtorch `version` (`2.4.1+cu121`), if any of the range.
pub fn tch_for_libtorch(version: &str) -> Option<u32> {
    RELEASES
        .iter()
        .find(|(_, release)| is_release(version, release))
        .map(|(minor, _)| *minor)
}

/// The tch minor release of a tch version (`0.17`, `0.17.0`), if any of the range.
pub fn tch_minor(version: &str) -> Option<u32> {
    let minor = version
        .strip_prefix("0.")?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    RELEASES.iter().any(|(m, _)| *m == minor).then_some(minor)
}

/// Whether `version` (`2.11.0`, `2.11.1+cu128`) is a patch release of `release` (`2.11`).
pub fn is_release(version: &str, release: &str) -> bool {
    let base = version.split('+').next().unwrap_or(version);
    base.strip_prefix(release)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}
