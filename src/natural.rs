//! Natural ordering of dotted tensor names, so that `layer1.10` comes after `layer1.9`.

use std::cmp::Ordering;

/// Compares two names segment by segment (split on `.`), each segment by runs of digits
/// (compared as numbers) and of other characters (compared as bytes). A name that is a
/// prefix of the other, segment-wise, comes first.
pub(crate) fn cmp_names(a: &str, b: &str) -> Ordering {
    let mut sa = a.split('.');
    let mut sb = b.split('.');
    loop {
        match (sa.next(), sb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match cmp_segment(x, y) {
                Ordering::Equal => continue,
                other => return other,
            },
        }
    }
}

/// Compares one segment by digit and non-digit runs.
pub(crate) fn cmp_segment(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_run(a, true);
                let (nb, rb) = split_run(b, true);
                match cmp_digits(na, nb) {
                    Ordering::Equal => {}
                    other => return other,
                }
                (a, b) = (ra, rb);
            }
            (Some(_), Some(_)) => {
                let (ta, ra) = split_run(a, false);
                let (tb, rb) = split_run(b, false);
                // A digit run sorts before text: "a1" < "ab".
                let (da, db) = (ta.is_empty(), tb.is_empty());
                match (da, db) {
                    (true, false) => return Ordering::Less,
                    (false, true) => return Ordering::Greater,
                    _ => {}
                }
                match ta.cmp(tb) {
                    Ordering::Equal => {}
                    other => return other,
                }
                (a, b) = (ra, rb);
            }
        }
    }
}

fn split_run(s: &[u8], digits: bool) -> (&[u8], &[u8]) {
    let n = s
        .iter()
        .position(|c| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(n)
}

/// Compares two runs of ASCII digits by value, without parsing (they can be long), and
/// `7` before `07` when the values are equal, so that the order is total.
fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    let ta = trim_zeros(a);
    let tb = trim_zeros(b);
    ta.len()
        .cmp(&tb.len())
        .then_with(|| ta.cmp(tb))
        .then_with(|| a.len().cmp(&b.len()))
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_by(|a, b| cmp_names(a, b));
        v
    }

    #[test]
    fn numbers_compare_by_value() {
        assert_eq!(
            sorted(vec![
                "layer1.10.w",
                "layer1.9.w",
                "layer1.1.w",
                "layer10.w",
                "layer2.w"
            ]),
            vec![
                "layer1.1.w",
                "layer1.9.w",
                "layer1.10.w",
                "layer2.w",
                "layer10.w"
            ]
        );
    }

    #[test]
    fn segments_compare_before_the_rest() {
        // Byte order would put "a.bias" before "a.b.weight" only by accident of '.' < 'i';
        // segment order compares "b" with "bias" first.
        assert_eq!(cmp_names("a.b.weight", "a.bias"), Ordering::Less);
        assert_eq!(cmp_names("a", "a.b"), Ordering::Less);
        assert_eq!(cmp_names("fc", "fc1"), Ordering::Less);
    }

    #[test]
    fn order_is_total_with_leading_zeros_and_long_numbers() {
        assert_eq!(cmp_segment("7", "07"), Ordering::Less);
        assert_eq!(cmp_segment("07", "7"), Ordering::Greater);
        assert_eq!(
            cmp_segment("123456789012345678901234567890", "99"),
            Ordering::Greater
        );
        assert_eq!(cmp_segment("a1", "ab"), Ordering::Less);
        assert_eq!(cmp_segment("x", "x"), Ordering::Equal);
    }
}
