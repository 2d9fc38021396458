//! Typed ids: `AppId`, `NodeId`, … are one generic [`Id`] over a marker per
//! kind, so an app id cannot be passed where a node id is wanted, and every
//! way into one (`FromStr`, serde, the database) goes through one check.
//!
//! The check is the one the server already answers 404 early with
//! ([`crate::id::is_valid`]): the kind's prefix, `_`, then 1 to 64
//! lower-case letters or digits. `new()` makes 20 of them; the looser
//! length accepts the ids of the spec's examples and of tests (`app_a`).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use super::InvalidId;

/// A kind of id: its prefix and its name in errors.
pub trait IdKind {
    /// `app` for `app_…`.
    const PREFIX: &'static str;
    /// `app id`.
    const WHAT: &'static str;
}

/// An id of kind `K`: a checked string such as `app_3k8s2d9m1x…`.
pub struct Id<K: IdKind> {
    text: String,
    kind: PhantomData<fn() -> K>,
}

impl<K: IdKind> Id<K> {
    /// A new random id of this kind.
    #[cfg(feature = "crypto")]
    #[allow(clippy::new_without_default)] // a random `Default` would surprise
    pub fn new() -> Self {
        Self::unchecked(crate::id::new_id(K::PREFIX))
    }

    /// Check `s` and take it as an id of this kind.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
        let s = s.into();
        if crate::id::is_valid(K::PREFIX, &s) {
            Ok(Self::unchecked(s))
        } else {
            Err(InvalidId {
                what: K::WHAT,
                prefix: K::PREFIX,
                value: super::clip(&s),
            })
        }
    }

    fn unchecked(text: String) -> Self {
        Self {
            text,
            kind: PhantomData,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

/// `app_…`
pub type AppId = Id<kind::App>;
/// `dep_…`
pub type DeploymentId = Id<kind::Deployment>;
/// `evt_…`
pub type EventId = Id<kind::Event>;
/// `inst_…`
pub type InstanceId = Id<kind::Instance>;
/// `inv_…` (an invitation's id, not its secret)
pub type InvitationId = Id<kind::Invitation>;
/// `login_…` (a login attempt)
pub type LoginId = Id<kind::Login>;
/// `node_…`
pub type NodeId = Id<kind::Node>;
/// `op_…` (a multi-step operation)
pub type OperationId = Id<kind::Operation>;
/// `org_…`
pub type OrgId = Id<kind::Org>;
/// `req_…` (a request's trace id)
pub type RequestId = Id<kind::Request>;
/// `sa_…`
pub type ServiceAccountId = Id<kind::ServiceAccount>;
/// `tok_…` (a token's id, not its secret)
pub type TokenId = Id<kind::Token>;
/// `upl_…`
pub type UploadId = Id<kind::Upload>;
/// `usr_…`
pub type UserId = Id<kind::User>;

/// The marker types of [`Id`]: one per kind, never constructed.
pub mod kind {
    use super::IdKind;

    #[derive(Debug)]
    pub enum App {}
    impl IdKind for App {
        const PREFIX: &'static str = "app";
        const WHAT: &'static str = "app id";
    }

    #[derive(Debug)]
    pub enum Deployment {}
    impl IdKind for Deployment {
        const PREFIX: &'static str = "dep";
        const WHAT: &'static str = "deployment id";
    }

    #[derive(Debug)]
    pub enum Event {}
    impl IdKind for Event {
        const PREFIX: &'static str = "evt";
        const WHAT: &'static str = "event id";
    }

    #[derive(Debug)]
    pub enum Instance {}
    impl IdKind for Instance {
        const PREFIX: &'static str = "inst";
        const WHAT: &'static str = "instance id";
    }

    #[derive(Debug)]
    pub enum Invitation {}
    impl IdKind for Invitation {
        const PREFIX: &'static str = "inv";
        const WHAT: &'static str = "invitation id";
    }

    #[derive(Debug)]
    pub enum Login {}
    impl IdKind for Login {
        const PREFIX: &'static str = "login";
        const WHAT: &'static str = "login id";
    }

    #[derive(Debug)]
    pub enum Node {}
    impl IdKind for Node {
        const PREFIX: &'static str = "node";
        const WHAT: &'static str = "node id";
    }

    #[derive(Debug)]
    pub enum Operation {}
    impl IdKind for Operation {
        const PREFIX: &'static str = "op";
        const WHAT: &'static str = "operation id";
    }

    #[derive(Debug)]
    pub enum Org {}
    impl IdKind for Org {
        const PREFIX: &'static str = "org";
        const WHAT: &'static str = "organization id";
    }

    #[derive(Debug)]
    pub enum Request {}
    impl IdKind for Request {
        const PREFIX: &'static str = "req";
        const WHAT: &'static str = "request id";
    }

    #[derive(Debug)]
    pub enum ServiceAccount {}
    impl IdKind for ServiceAccount {
        const PREFIX: &'static str = "sa";
        const WHAT: &'static str = "service account id";
    }

    #[derive(Debug)]
    pub enum Token {}
    impl IdKind for Token {
        const PREFIX: &'static str = "tok";
        const WHAT: &'static str = "token id";
    }

    #[derive(Debug)]
    pub enum Upload {}
    impl IdKind for Upload {
        const PREFIX: &'static str = "upl";
        const WHAT: &'static str = "upload id";
    }

    #[derive(Debug)]
    pub enum User {}
    impl IdKind for User {
        const PREFIX: &'static str = "usr";
        const WHAT: &'static str = "user id";
    }
}

// Written by hand rather than derived: a derive would ask the marker `K`
// to be `Clone`, `Eq`, … too.

impl<K: IdKind> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self::unchecked(self.text.clone())
    }
}

impl<K: IdKind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<K: IdKind> Eq for Id<K> {}

impl<K: IdKind> PartialEq<str> for Id<K> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<K: IdKind> PartialEq<&str> for Id<K> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<K: IdKind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: IdKind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}

/// Hashes as its text, so that `Borrow<str>` lookups in maps work.
impl<K: IdKind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<K: IdKind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<K: IdKind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K: IdKind> AsRef<str> for Id<K> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<K: IdKind> Borrow<str> for Id<K> {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}

impl<K: IdKind> TryFrom<String> for Id<K> {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}

impl<K: IdKind> From<Id<K>> for String {
    fn from(id: Id<K>) -> String {
        id.text
    }
}

impl<K: IdKind> serde::Serialize for Id<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_str(&self.text, s)
    }
}

/// Deserializing checks, as `FromStr` does.
impl<'de, K: IdKind> serde::Deserialize<'de> for Id<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(s).map_err(serde::de::Error::custom)
    }
}

/// TEXT in any sqlx database whose `String` is TEXT (the store's `Any`,
/// SQLite, PostgreSQL); reading checks, as `FromStr` does.
#[cfg(feature = "sqlx")]
mod sql {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::{Database, Decode, Encode, Type};

    use super::{Id, IdKind};

    impl<K: IdKind, DB: Database> Type<DB> for Id<K>
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

    impl<'q, K: IdKind, DB: Database> Encode<'q, DB> for Id<K>
    where
        String: Encode<'q, DB>,
    {
        fn encode_by_ref(
            &self,
            buf: &mut <DB as Database>::ArgumentBuffer<'q>,
        ) -> Result<IsNull, BoxDynError> {
            <String as Encode<'q, DB>>::encode_by_ref(&self.text, buf)
        }
    }

    impl<'r, K: IdKind, DB: Database> Decode<'r, DB> for Id<K>
    where
        String: Decode<'r, DB>,
    {
        fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
            let s = <String as Decode<'r, DB>>::decode(value)?;
            Ok(Self::parse(s)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[cfg(feature = "crypto")]
    #[test]
    fn new_ids_parse_back_as_their_own_kind_only() {
        let a = AppId::new();
        assert!(a.as_str().starts_with("app_"));
        assert_eq!(a.as_str().len(), "app_".len() + 20);
        assert_eq!(a.to_string().parse::<AppId>().unwrap(), a);
        assert!(a.as_str().parse::<NodeId>().is_err());
        assert_ne!(AppId::new(), a);
        for s in [
            DeploymentId::new().into_string(),
            EventId::new().into_string(),
            InstanceId::new().into_string(),
            InvitationId::new().into_string(),
            LoginId::new().into_string(),
            NodeId::new().into_string(),
            OrgId::new().into_string(),
            RequestId::new().into_string(),
            ServiceAccountId::new().into_string(),
            TokenId::new().into_string(),
            UploadId::new().into_string(),
            UserId::new().into_string(),
        ] {
            assert!(s.parse::<AppId>().is_err(), "{s}");
        }
        assert!(UserId::new().as_str().starts_with("usr_"));
        assert!(OrgId::new().as_str().starts_with("org_"));
    }

    #[test]
    fn ids_are_checked_by_prefix_charset_and_length() {
        for ok in ["app_2v8s9d2k1m", "app_a", "app_0123456789abcdefghij"] {
            assert_eq!(ok.parse::<AppId>().unwrap().as_str(), ok);
        }
        assert!(format!("app_{}", "a".repeat(64)).parse::<AppId>().is_ok());
        for bad in [
            "",
            "app",
            "app_",
            "app-2v8s9d2k1m",
            "APP_2v8s9d2k1m",
            "app_2V8S9D2K1M",
            "app_2v8s-9d2k",
            "app_2v8s_9d2k",
            "app_ 2v8s",
            "app_é",
            "node_2v8s9d2k1m",
            "xapp_2v8s9d2k1m",
        ] {
            let e = bad.parse::<AppId>().unwrap_err();
            assert_eq!(e.prefix, "app");
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains("app id"), "{e}");
        }
        assert!(format!("app_{}", "a".repeat(65)).parse::<AppId>().is_err());
        // The prefix is the whole word before `_`.
        assert!("sa_abc".parse::<ServiceAccountId>().is_ok());
        assert!("usr_abc".parse::<ServiceAccountId>().is_err());
        assert!("inst_abc".parse::<InvitationId>().is_err());
    }

    #[test]
    fn serde_is_the_plain_string_and_deserializing_checks() {
        let id: NodeId = "node_8s2d9k1m3x".parse().unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"node_8s2d9k1m3x\"");
        let back: NodeId = serde_json::from_str("\"node_8s2d9k1m3x\"").unwrap();
        assert_eq!(back, id);
        let e = serde_json::from_str::<NodeId>("\"app_8s2d9k1m3x\"").unwrap_err();
        assert!(e.to_string().contains("node id"), "{e}");
        assert!(serde_json::from_str::<NodeId>("7").is_err());
        let e = "x"
            .parse::<UploadId>()
            .unwrap_err()
            .field_error("source.upload_id");
        assert_eq!(e.message, "must be upload id (upl_…)");
    }

    #[test]
    fn ids_compare_and_look_up_as_their_text() {
        let id: InstanceId = "inst_1".parse().unwrap();
        assert_eq!(id, "inst_1");
        assert_eq!(id.as_ref(), "inst_1");
        assert_eq!(format!("{id:?}"), "\"inst_1\"");
        let mut m = HashMap::new();
        m.insert(id.clone(), 1);
        assert_eq!(m.get("inst_1"), Some(&1));
        assert_eq!(String::from(id), "inst_1");
    }
}
