//! TOTP (RFC 6238) second factor and recovery codes. TOTP secrets are
//! sealed at rest by the vault (`crate::vault`, scope `system`).

use rand::Rng;
use shellwego_core::{token, Error};
use shellwego_store::{users, Tx};
use totp_rs::{Algorithm, TOTP};

/// A new 160-bit TOTP secret.
pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; 20];
    rand::thread_rng().fill(&mut s[..]);
    s
}

fn totp(secret: Vec<u8>, account: &str) -> Result<TOTP, Error> {
    // SHA-1, 6 digits, 30 s steps: what every authenticator app speaks;
    // one step of clock skew either way.
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        Some("ShellWeGo".into()),
        account.replace(':', "_"),
    )
    .map_err(|e| Error::Internal(format!("totp: {e}")))
}

/// Base32 secret and `otpauth://` URI for an authenticator app.
pub fn enrollment(secret: &[u8], account: &str) -> Result<(String, String), Error> {
    let t = totp(secret.to_vec(), account)?;
    Ok((t.get_secret_base32(), t.get_url()))
}

/// The 30-second time step whose code `code` is (now, or one step either
/// side for clock skew), if any.
pub fn totp_step(secret: &[u8], code: &str) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret.to_vec(), "x").ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let step = now / 30;
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|s| {
            let expected = t.generate(s * 30);
            subtle_eq(expected.as_bytes(), code.as_bytes())
        })
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn verify_totp(secret: &[u8], code: &str) -> bool {
    totp_step(secret, code).is_some()
}

/// The current code for `secret` (tests, and clients of our own).
pub fn current_code(secret: &[u8]) -> Result<String, Error> {
    totp(secret.to_vec(), "x")?
        .generate_current()
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Ten one-time recovery codes, `xxxxx-xxxxx`.
pub fn recovery_codes() -> Vec<String> {
    const A: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| {
            let mut s = String::with_capacity(11);
            for i in 0..10 {
                if i == 5 {
                    s.push('-');
                }
                s.push(char::from(A[rng.gen_range(0..A.len())]));
            }
            s
        })
        .collect()
}

pub fn hash_recovery(code: &str) -> String {
    token::hash(&code.trim().to_lowercase())
}

/// Check a login's second factor: a TOTP code, or an unused recovery code
/// (which is used up).
pub async fn check_login_code(
    tx: &mut Tx,
    vault: &crate::vault::Vault,
    user_id: &str,
    secret_enc: Option<&str>,
    code: &str,
) -> Result<bool, Error> {
    let Some(enc) = secret_enc else {
        return Ok(false);
    };
    let secret = vault
        .open(tx, &crate::vault::totp_aad(user_id), enc)
        .await?;
    if let Some(step) = totp_step(&secret, code) {
        // Each code works once: the step must be newer than the last one used.
        return users::use_totp_step(tx, user_id, i64::try_from(step).unwrap_or(i64::MAX)).await;
    }
    users::use_recovery_code(tx, user_id, &hash_recovery(code)).await
}

/// The current code for a base32 secret, as an authenticator app shows it.
pub fn current_code_base32(secret_b32: &str) -> Result<String, Error> {
    let bytes = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|e| Error::Internal(format!("{e:?}")))?;
    current_code(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_and_recovery_codes() {
        let s = new_secret();
        let code = current_code(&s).unwrap();
        assert!(verify_totp(&s, &code));
        assert!(!verify_totp(&s, "000000") || code == "000000");
        let (b32, url) = enrollment(&s, "a@b.c").unwrap();
        assert!(url.starts_with("otpauth://totp/") && url.contains(&b32));
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_ne!(codes[0], codes[1]);
    }
}
