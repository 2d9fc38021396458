//! Resource identifiers: `<prefix>_<random>`, URL-safe and unguessable.

/// Lower-case letters and digits: safe in URLs, DNS labels and file names,
/// and sorted the same way by every collation we run on.
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// 20 symbols of 36 ≈ 103 bits of randomness.
#[cfg(feature = "crypto")]
const LEN: usize = 20;

/// A new random id such as `evt_3k8s2d9m1x...`.
#[cfg(feature = "crypto")]
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 1 + LEN);
    s.push_str(prefix);
    s.push('_');
    for _ in 0..LEN {
        s.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    s
}

/// True when `s` looks like an id we could have made with `prefix`.
/// Used to answer 404 early for ids of the wrong shape.
pub fn is_valid(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "crypto")]
    #[test]
    fn ids_have_prefix_and_differ() {
        let a = new_id("evt");
        let b = new_id("evt");
        assert!(a.starts_with("evt_"));
        assert_eq!(a.len(), 4 + LEN);
        assert_ne!(a, b);
        assert!(is_valid("evt", &a));
        assert!(!is_valid("app", &a));
    }

    #[test]
    fn ids_of_the_wrong_shape_are_not_valid() {
        assert!(is_valid("evt", "evt_3k8s2d9m1x"));
        assert!(!is_valid("evt", "evt_UPPER"));
        assert!(!is_valid("app", "evt_3k8s2d9m1x"));
    }
}
