//! Encryption at rest: envelope encryption under the installation's master
//! key.
//!
//! Every value kept encrypted (secret versions, app env, webhook signing
//! secrets, TOTP secrets) is sealed with XChaCha20-Poly1305 under the
//! **data key** of its scope (an organization, or `system`), with
//! associated data naming what it is (`secret:<id>:<version>`,
//! `env:<app id>`, …), so a sealed value copied to another row does not
//! open. Data keys live in the `data_keys` table only **wrapped**
//! (ChaCha20-Poly1305) by a **master key**, which never enters the database:
//! `SHELLWEGO_MASTER_KEY` (base64 of 32 bytes; several separated by commas)
//! or `<data-dir>/master.key` (one per line), created 0600 on first start.
//!
//! Which master key is the installation's current one is recorded in the
//! database (`system_state.master_key_check`: a probe sealed by it); a
//! replica may hold more keys than that (the next one, during a rotation).
//! Rotating the master key ([`rotate_master_key`], `shellwego server
//! rotate-master-key`) re-wraps the data keys in one transaction; the
//! sealed values themselves never change, and replicas keep their unwrapped
//! data keys, so nothing stops.
//!
//! Formats: a wrapped data key is `mk1.<master key id>.<base64>`, a sealed
//! value `v1.<data key id>.<base64>` (base64 of nonce ‖ ciphertext ‖ tag).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use sha2::{Digest, Sha256};
use shellwego_core::{id, Error};
use shellwego_store::events::{self, Actor, NewEvent};
use shellwego_store::{secrets, Conn, Store};

/// What the master-key check row holds, sealed.
const PROBE: &[u8] = b"shellwego master key check";
const PROBE_AAD: &[u8] = b"master_key_check";

fn decode(s: &str) -> Result<Vec<u8>, Error> {
    STANDARD
        .decode(s)
        .map_err(|_| Error::Internal("a sealed value is not base64".into()))
}

/// One master key and its id (the first 8 bytes of its SHA-256, in hex:
/// names it without revealing it).
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn from_base64(s: &str) -> Result<MasterKey, Error> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| Error::Internal("a master key is not base64".into()))?;
        let cipher = ChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| Error::Internal("a master key must be 32 bytes (base64)".into()))?;
        Ok(MasterKey {
            id: hex::encode(&Sha256::digest(&bytes)[..8]),
            cipher,
        })
    }

    /// A new random key and its base64 text.
    pub fn generate() -> (String, MasterKey) {
        let text = STANDARD.encode(ChaCha20Poly1305::generate_key(&mut OsRng));
        let key = MasterKey::from_base64(&text).unwrap_or_else(|_| unreachable_key());
        (text, key)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String, Error> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("mk1.{}.{}", self.id, STANDARD.encode(out)))
    }

    fn open_raw(&self, aad: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
        if raw.len() < 12 {
            return None;
        }
        let (nonce, ct) = raw.split_at(12);
        self.cipher
            .decrypt(
                chacha20poly1305::Nonce::from_slice(nonce),
                Payload { msg: ct, aad },
            )
            .ok()
    }
}

// A 32-byte key always makes a cipher; never reached.
fn unreachable_key() -> MasterKey {
    MasterKey {
        id: String::new(),
        cipher: ChaCha20Poly1305::new(&ChaCha20Poly1305::generate_key(&mut OsRng)),
    }
}

/// Where the master keys come from.
#[derive(Debug, Clone)]
enum Source {
    /// `SHELLWEGO_MASTER_KEY` (comma-separated).
    Given,
    /// `<data-dir>/master.key` (one per line); re-read when a value names
    /// a key this replica does not hold (a rotation on this host).
    File(PathBuf),
}

/// The master keys this replica holds.
pub struct Keyring {
    keys: RwLock<Vec<MasterKey>>,
    source: Source,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(…)")
    }
}

fn parse_keys(text: &str) -> Result<Vec<MasterKey>, Error> {
    let keys: Vec<MasterKey> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(MasterKey::from_base64)
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(Error::Internal("no master key given".into()));
    }
    Ok(keys)
}

impl Keyring {
    /// `given` (`SHELLWEGO_MASTER_KEY`) when set, else `<data_dir>/master.key`,
    /// created (0600) with a new key on first use.
    pub fn load_or_create(data_dir: &Path, given: Option<&str>) -> Result<Keyring, Error> {
        if let Some(k) = given {
            return Ok(Keyring {
                keys: RwLock::new(parse_keys(k)?),
                source: Source::Given,
            });
        }
        let path = data_dir.join("master.key");
        if !path.exists() {
            let (text, _) = MasterKey::generate();
            crate::secret_file::write_secret_file(&path, &format!("{text}\n"))?;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", path.display())))?;
        Ok(Keyring {
            keys: RwLock::new(parse_keys(&text)?),
            source: Source::File(path),
        })
    }

    /// A ring of exactly these keys (tests, the rotation command).
    pub fn of(keys: Vec<MasterKey>) -> Keyring {
        Keyring {
            keys: RwLock::new(keys),
            source: Source::Given,
        }
    }

    fn key(&self, id: &str) -> Option<MasterKey> {
        let find = |ring: &Keyring| {
            ring.keys
                .read()
                .ok()
                .and_then(|k| k.iter().find(|k| k.id == id).cloned())
        };
        find(self).or_else(|| {
            self.reload();
            find(self)
        })
    }

    fn all(&self) -> Vec<MasterKey> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Re-read the key file (after a rotation on this host).
    fn reload(&self) {
        if let Source::File(path) = &self.source {
            if let Ok(keys) = std::fs::read_to_string(path)
                .map_err(Error::internal)
                .and_then(|t| parse_keys(&t))
            {
                if let Ok(mut k) = self.keys.write() {
                    *k = keys;
                }
            }
        }
    }

    /// Open a value sealed by a master key: `mk1.<id>.…` by that key, or
    /// (values written before data keys existed) by whichever key opens it.
    fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, Error> {
        if let Some(rest) = sealed.strip_prefix("mk1.") {
            let (kid, b64) = rest
                .split_once('.')
                .ok_or_else(|| Error::Internal("a wrapped key is malformed".into()))?;
            let key = self.key(kid).ok_or_else(|| {
                Error::Unavailable(format!(
                    "a value is sealed by master key {kid}, which this replica does not hold: give it the installation's current master key (see `shellwego server rotate-master-key`)"
                ))
            })?;
            return key.open_raw(aad, &decode(b64)?).ok_or_else(|| {
                Error::Internal(format!(
                    "master key {kid} does not open a value sealed by it"
                ))
            });
        }
        let raw = decode(sealed)?;
        self.all()
            .iter()
            .find_map(|k| k.open_raw(b"", &raw))
            .ok_or_else(|| Error::Internal("cannot decrypt: wrong master key?".into()))
    }

    /// The installation's current master key: the one that opens the check
    /// row's probe.
    fn current(&self, check: &str) -> Result<MasterKey, Error> {
        let opens = |k: &MasterKey| -> bool {
            let raw = match check.strip_prefix("mk1.") {
                Some(rest) => match rest.split_once('.') {
                    Some((kid, b64)) if kid == k.id => {
                        decode(b64).ok().and_then(|r| k.open_raw(PROBE_AAD, &r))
                    }
                    _ => None,
                },
                None => decode(check).ok().and_then(|r| k.open_raw(b"", &r)),
            };
            raw.as_deref() == Some(PROBE)
        };
        if let Some(k) = self.all().into_iter().find(opens) {
            return Ok(k);
        }
        self.reload();
        self.all().into_iter().find(opens).ok_or_else(|| {
            Error::Unavailable(
                "this replica does not hold the installation's current master key: every replica sharing the database must hold it (SHELLWEGO_MASTER_KEY, or <data-dir>/master.key; see `shellwego server rotate-master-key`)".into(),
            )
        })
    }
}

/// Every replica of an installation must hold its current master key. The
/// first to start records a probe sealed with its (first) key; a replica
/// that cannot open it refuses to start, instead of sealing what the
/// others cannot open.
pub async fn check_master_key(store: &Store, ring: &Keyring) -> Result<(), Error> {
    let first = ring
        .all()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("no master key".into()))?;
    let sealed = first.seal(PROBE_AAD, PROBE)?;
    let mut c = store.conn().await?;
    let stored = shellwego_store::system::claim_value(&mut c, "master_key_check", &sealed).await?;
    ring.current(&stored).map(|_| ())
}

/// A data key, unwrapped: seals values of its scope.
#[derive(Clone)]
pub struct DataKey {
    id: String,
    cipher: Arc<XChaCha20Poly1305>,
}

impl DataKey {
    /// Seal `plaintext`; `aad` names what it is and must be given again to
    /// open it.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<String, Error> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v1.{}.{}", self.id, STANDARD.encode(out)))
    }

    fn open_raw(&self, aad: &str, raw: &[u8]) -> Result<Vec<u8>, Error> {
        if raw.len() < 24 {
            return Err(Error::Internal("a sealed value is too short".into()));
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher
            .decrypt(
                chacha20poly1305::XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::Internal(format!(
                    "a value sealed by data key {} does not open as {aad}",
                    self.id
                ))
            })
    }
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<String, DataKey>,
    by_scope: HashMap<String, String>,
}

/// The master keys and the data keys unwrapped so far (kept for the life
/// of the process: a rotation of the master key does not change them).
#[derive(Clone)]
pub struct Vault {
    ring: Arc<Keyring>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(…)")
    }
}

/// The scope of values that belong to no organization (TOTP secrets).
pub const SYSTEM: &str = "system";

impl Vault {
    pub fn new(ring: Keyring) -> Vault {
        Vault {
            ring: Arc::new(ring),
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    pub fn ring(&self) -> &Keyring {
        &self.ring
    }

    fn cached(&self, id: &str) -> Option<DataKey> {
        self.cache.lock().ok()?.by_id.get(id).cloned()
    }

    fn unwrap(&self, k: &secrets::DataKey) -> Result<DataKey, Error> {
        let bytes = self.ring.open(k.id.as_bytes(), &k.wrapped)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| Error::Internal(format!("data key {} is not 32 bytes", k.id)))?;
        let dk = DataKey {
            id: k.id.clone(),
            cipher: Arc::new(cipher),
        };
        if let Ok(mut c) = self.cache.lock() {
            c.by_id.insert(k.id.clone(), dk.clone());
            c.by_scope.insert(k.scope.clone(), k.id.clone());
        }
        Ok(dk)
    }

    /// The data key of `scope`, made (and stored, wrapped by the current
    /// master key) on first use. Call it before beginning the transaction
    /// that stores what it seals: making a key writes in a transaction of
    /// its own.
    pub async fn key_for(&self, store: &Store, scope: &str) -> Result<DataKey, Error> {
        let known = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.by_scope.get(scope).cloned());
        if let Some(k) = known.and_then(|id| self.cached(&id)) {
            return Ok(k);
        }
        if let Some(k) = secrets::data_key_of(&mut *store.conn().await?, scope).await? {
            return self.unwrap(&k);
        }
        let mut tx = store.begin().await?;
        let check = secrets::lock_master_check(&mut tx)
            .await?
            .ok_or_else(|| Error::Internal("the master key check is missing".into()))?;
        let master = self.ring.current(&check)?;
        let id = id::new_id("dek");
        let bytes = XChaCha20Poly1305::generate_key(&mut OsRng);
        let fresh = secrets::DataKey {
            wrapped: master.seal(id.as_bytes(), &bytes)?,
            id,
            scope: scope.to_string(),
        };
        secrets::insert_data_key(&mut tx, &fresh).await?;
        // Ours, or the one a concurrent replica made first.
        let stored = secrets::data_key_of(&mut tx, scope)
            .await?
            .ok_or_else(|| Error::Internal("a data key vanished".into()))?;
        shellwego_store::commit(tx).await?;
        self.unwrap(&stored)
    }

    /// Open a sealed value (`aad` as it was sealed with). Reads the data
    /// key through `db` the first time.
    pub async fn open(&self, db: &mut Conn, aad: &str, sealed: &str) -> Result<Vec<u8>, Error> {
        let Some(rest) = sealed.strip_prefix("v1.") else {
            // Sealed directly by the master key before data keys existed
            // (TOTP secrets of installations older than this).
            return self.ring.open(b"", sealed);
        };
        let (dek, b64) = rest
            .split_once('.')
            .ok_or_else(|| Error::Internal("a sealed value is malformed".into()))?;
        let key = match self.cached(dek) {
            Some(k) => k,
            None => {
                let k = secrets::data_key(db, dek)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("data key {dek} is missing")))?;
                self.unwrap(&k)?
            }
        };
        key.open_raw(aad, &decode(b64)?)
    }

    /// [`Vault::open`] of a UTF-8 value.
    pub async fn open_string(
        &self,
        db: &mut Conn,
        aad: &str,
        sealed: &str,
    ) -> Result<String, Error> {
        String::from_utf8(self.open(db, aad, sealed).await?)
            .map_err(|_| Error::Internal(format!("the value sealed as {aad} is not UTF-8")))
    }
}

/// What a rotation of the master key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub old_key_id: String,
    pub new_key_id: String,
    pub data_keys: usize,
    /// Values sealed by the old key directly (older TOTP secrets), now
    /// sealed under the system data key.
    pub resealed: usize,
}

/// Make `new` the installation's master key: in one transaction, every data
/// key is unwrapped (by whichever key of `ring` wrapped it) and wrapped again
/// by `new`, values sealed by a master key directly are resealed under the
/// system data key, and the check row names `new`. Replicas holding `new`
/// carry on without a restart (they keep their unwrapped data keys, and new
/// data keys are wrapped by the key the check row names); a replica on this
/// host re-reads `<data-dir>/master.key`, which the command rewrites first.
pub async fn rotate_master_key(
    store: &Store,
    ring: &Keyring,
    new: &MasterKey,
) -> Result<Rotated, Error> {
    let vault = Vault::new(Keyring::of(
        ring.all().into_iter().chain([new.clone()]).collect(),
    ));
    let mut tx = store.begin().await?;
    let check = secrets::lock_master_check(&mut tx).await?.ok_or_else(|| {
        Error::Internal("the master key check is missing: start the server once first".into())
    })?;
    let old = vault.ring.current(&check)?;
    let mut data_keys = 0;
    for k in secrets::all_data_keys(&mut tx).await? {
        let bytes = vault.ring.open(k.id.as_bytes(), &k.wrapped)?;
        secrets::rewrap_data_key(&mut tx, &k.id, &new.seal(k.id.as_bytes(), &bytes)?).await?;
        data_keys += 1;
    }
    // The system data key, made here if there is none yet (under the new key).
    let system = match secrets::data_key_of(&mut tx, SYSTEM).await? {
        Some(k) => vault.unwrap(&k)?,
        None => {
            let id = id::new_id("dek");
            let bytes = XChaCha20Poly1305::generate_key(&mut OsRng);
            let fresh = secrets::DataKey {
                wrapped: new.seal(id.as_bytes(), &bytes)?,
                id,
                scope: SYSTEM.into(),
            };
            secrets::insert_data_key(&mut tx, &fresh).await?;
            vault.unwrap(&fresh)?
        }
    };
    let mut resealed = 0;
    for (uid, col, value) in shellwego_store::users::master_sealed(&mut tx).await? {
        let plain = vault.ring.open(b"", &value)?;
        let sealed = system.seal(&totp_aad(&uid), &plain)?;
        shellwego_store::users::set_sealed(&mut tx, &uid, col, &sealed).await?;
        resealed += 1;
    }
    secrets::set_master_check(&mut tx, &new.seal(PROBE_AAD, PROBE)?).await?;
    events::record(
        &mut tx,
        NewEvent::info("master_key.rotated", &Actor::system(), "master_key", new.id())
            .meta(serde_json::json!({"previous_key_id": old.id, "data_keys": data_keys, "resealed": resealed})),
    )
    .await?;
    shellwego_store::commit(tx).await?;
    Ok(Rotated {
        old_key_id: old.id,
        new_key_id: new.id.clone(),
        data_keys,
        resealed,
    })
}

/// The associated data of a user's TOTP secret.
pub fn totp_aad(user_id: &str) -> String {
    format!("totp:{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_keys_seal_and_open_with_their_associated_data() {
        let (_, k) = MasterKey::generate();
        let ring = Keyring::of(vec![k.clone()]);
        let sealed = k.seal(b"a", b"value").unwrap();
        assert!(sealed.starts_with(&format!("mk1.{}.", k.id())));
        assert_eq!(ring.open(b"a", &sealed).unwrap(), b"value");
        assert!(ring.open(b"b", &sealed).is_err());
        let (_, other) = MasterKey::generate();
        assert!(Keyring::of(vec![other]).open(b"a", &sealed).is_err());
    }

    #[test]
    fn the_current_key_is_the_one_that_opens_the_check() {
        let (_, a) = MasterKey::generate();
        let (_, b) = MasterKey::generate();
        let check = b.seal(PROBE_AAD, PROBE).unwrap();
        let ring = Keyring::of(vec![a.clone(), b.clone()]);
        assert_eq!(ring.current(&check).unwrap().id(), b.id());
        assert!(Keyring::of(vec![a]).current(&check).is_err());
    }

    #[test]
    fn keys_parse_from_a_list() {
        let (ta, a) = MasterKey::generate();
        let (tb, b) = MasterKey::generate();
        let keys = parse_keys(&format!("{ta}, {tb}")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id(), a.id());
        let keys = parse_keys(&format!("# current first\n{tb}\n{ta}\n")).unwrap();
        assert_eq!(keys[0].id(), b.id());
        assert!(parse_keys("").is_err());
        assert!(parse_keys("bm90IDMyIGJ5dGVz").is_err());
    }
}
