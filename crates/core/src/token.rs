//! API tokens: `<kind prefix>_<44 base62 chars>` (≈262 bits of randomness).
//! Only the SHA-256 of a token is ever stored; a presented token is looked
//! up by its hash, so no comparison of secrets happens at all.

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Base62 characters after the prefix: 44 × log2(62) ≈ 262 bits.
const SECRET_LEN: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Personal access token: user automation and CLI.
    Pat,
    /// Service account token: CI/CD, machine to machine.
    Sat,
    /// Session token: the web dashboard.
    Session,
    /// Temporary token: one operation, single use.
    Temp,
}

impl From<crate::model::LoginTokenType> for TokenKind {
    fn from(t: crate::model::LoginTokenType) -> TokenKind {
        match t {
            crate::model::LoginTokenType::PersonalAccessToken => TokenKind::Pat,
            crate::model::LoginTokenType::SessionToken => TokenKind::Session,
        }
    }
}

impl From<crate::model::NewTokenType> for TokenKind {
    fn from(t: crate::model::NewTokenType) -> TokenKind {
        match t {
            crate::model::NewTokenType::PersonalAccessToken => TokenKind::Pat,
            crate::model::NewTokenType::TemporaryToken => TokenKind::Temp,
        }
    }
}

impl TokenKind {
    pub const ALL: [TokenKind; 4] = [Self::Pat, Self::Sat, Self::Session, Self::Temp];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::Pat => "pat_",
            Self::Sat => "sat_",
            Self::Session => "sess_",
            Self::Temp => "temp_",
        }
    }

    /// The value stored in the `kind` column and shown as `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pat => "personal_access_token",
            Self::Sat => "service_account_token",
            Self::Session => "session_token",
            Self::Temp => "temporary_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Default lifespan from the spec's token table.
    pub fn default_lifespan(self) -> Duration {
        match self {
            Self::Pat => Duration::from_secs(365 * 86_400),
            Self::Sat => Duration::from_secs(90 * 86_400),
            Self::Session => Duration::from_secs(86_400),
            Self::Temp => Duration::from_secs(15 * 60),
        }
    }

    /// The kind a presented token claims by its prefix.
    pub fn of_token(token: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| token.starts_with(k.prefix()))
    }
}

/// With the `sqlx` feature, a token kind is TEXT in any sqlx database
/// whose `str`/`String` are TEXT (the store's `Any`): written as
/// [`TokenKind::as_str`], read back through [`TokenKind::parse`] (an
/// unknown word is a decode error, never a default).
#[cfg(feature = "sqlx")]
mod sqlx_impls {
    use super::TokenKind;
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::{Database, Decode, Encode, Type};

    impl<DB: Database> Type<DB> for TokenKind
    where
        str: Type<DB>,
    {
        fn type_info() -> DB::TypeInfo {
            <str as Type<DB>>::type_info()
        }
        fn compatible(ty: &DB::TypeInfo) -> bool {
            <str as Type<DB>>::compatible(ty)
        }
    }

    impl<'q, DB: Database> Encode<'q, DB> for TokenKind
    where
        &'q str: Encode<'q, DB>,
    {
        fn encode_by_ref(
            &self,
            buf: &mut <DB as Database>::ArgumentBuffer<'q>,
        ) -> Result<IsNull, BoxDynError> {
            <&'q str as Encode<'q, DB>>::encode(self.as_str(), buf)
        }
    }

    impl<'r, DB: Database> Decode<'r, DB> for TokenKind
    where
        String: Decode<'r, DB>,
    {
        fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
            let s = <String as Decode<'r, DB>>::decode(value)?;
            TokenKind::parse(&s).ok_or_else(|| format!("unknown token kind {s}").into())
        }
    }
}

/// A freshly minted token: the secret (shown once) and what we store.
#[derive(Debug)]
pub struct NewToken {
    pub secret: String,
    pub hash: String,
    /// `pat_…abcd`: enough to recognise a token in a listing.
    pub hint: String,
}

pub fn generate(kind: TokenKind) -> NewToken {
    let body = Alphanumeric.sample_string(&mut rand::thread_rng(), SECRET_LEN);
    let secret = format!("{}{}", kind.prefix(), body);
    let hash = hash(&secret);
    let hint = hint(&secret);
    NewToken { secret, hash, hint }
}

/// A secret of another kind (`sw_join_…`, `nsec_…`, `inv_…`) with the same
/// randomness as tokens: `(secret, hash)`.
pub fn secret_with_prefix(prefix: &str) -> (String, String) {
    let body = Alphanumeric.sample_string(&mut rand::thread_rng(), SECRET_LEN);
    let secret = format!("{prefix}{body}");
    let h = hash(&secret);
    (secret, h)
}

/// Hex SHA-256 of a token: the only form in which tokens are stored.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn hint(token: &str) -> String {
    let prefix = TokenKind::of_token(token).map(|k| k.prefix()).unwrap_or("");
    let tail: String = token
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{prefix}…{tail}")
}

/// True when the string has the shape of one of our tokens. Cheap filter
/// before touching the store.
pub fn looks_valid(token: &str) -> bool {
    TokenKind::of_token(token).is_some_and(|k| {
        let body = &token[k.prefix().len()..];
        body.len() >= 43 && body.len() <= 128 && body.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        for kind in TokenKind::ALL {
            let t = generate(kind);
            assert!(t.secret.starts_with(kind.prefix()));
            assert_eq!(t.secret.len(), kind.prefix().len() + SECRET_LEN);
            assert!(looks_valid(&t.secret));
            assert_eq!(t.hash, hash(&t.secret));
            assert_eq!(t.hash.len(), 64);
            assert!(!t.hash.contains(&t.secret[5..]));
            assert_eq!(TokenKind::of_token(&t.secret), Some(kind));
            assert!(t.hint.ends_with(&t.secret[t.secret.len() - 4..]));
        }
        assert_ne!(
            generate(TokenKind::Pat).secret,
            generate(TokenKind::Pat).secret
        );
        assert!(!looks_valid("pat_short"));
        assert!(!looks_valid("garbage"));
    }

    #[test]
    fn request_token_types_are_token_kinds_of_the_same_name() {
        use crate::model::{LoginTokenType, NewTokenType};
        for t in LoginTokenType::ALL {
            assert_eq!(TokenKind::from(*t).as_str(), t.as_str());
        }
        for t in NewTokenType::ALL {
            assert_eq!(TokenKind::from(*t).as_str(), t.as_str());
        }
    }
}
