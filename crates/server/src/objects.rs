//! Where the control plane keeps objects (uploaded archives today; build
//! artefacts, backups and certificates later): storage that every replica
//! reaches, never one replica's disk when there may be several.
//!
//! - `database`: chunks in the store (`shellwego_store::objects`). The
//!   default with PostgreSQL: replicas sharing the database share the
//!   objects, with nothing else to run.
//! - `file://DIR` (or a plain path): a local directory, through
//!   `object_store`'s `LocalFileSystem`. The default with SQLite (one
//!   machine): `<data-dir>`, so archives live in `<data-dir>/uploads`.
//! - `s3://BUCKET[/PREFIX]`: S3 or a compatible store, through
//!   `object_store`'s `AmazonS3` (credentials, region and endpoint from the
//!   usual `AWS_*` environment variables; `AWS_ENDPOINT_URL` for MinIO and
//!   the like, with `AWS_ALLOW_HTTP=true` for plain HTTP).
//!
//! An object is written whole before anyone is told its key (the caller
//! records it after [`Objects::put`] returns), so a reader never sees a
//! partial one.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use sha2::Digest;
use shellwego_core::Error;
use shellwego_store::Store;

/// Chunks of an object as stored in the database (and the buffer size of
/// a write).
const CHUNK: usize = 1 << 20;

/// An object's bytes, streamed.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// What was stored: size in bytes and SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone)]
pub enum Objects {
    Database(Store),
    Remote {
        store: Arc<dyn ObjectStore>,
        /// `file:///var/lib/shellwego`, `s3://bucket/prefix` (for messages).
        describe: String,
    },
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Objects {
    /// The storage named by `url` (`database`, `file://DIR`, a path, or
    /// `s3://BUCKET/PREFIX`); `None`: the default for the store's backend,
    /// with `data_dir` for SQLite's.
    pub fn open(
        url: Option<&str>,
        store: &Store,
        data_dir: &std::path::Path,
    ) -> Result<Objects, Error> {
        let bad = |why: String| Error::field("storage_url", "invalid_value", why);
        let url = match url {
            Some(u) => u.trim().to_string(),
            None => match store.backend() {
                shellwego_store::Backend::Postgres => "database".into(),
                shellwego_store::Backend::Sqlite => data_dir.display().to_string(),
            },
        };
        if url == "database" {
            return Ok(Objects::Database(store.clone()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad(format!(
                    "'s3://{rest}' names no bucket: use s3://BUCKET[/PREFIX]"
                )));
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            // Settings in the URL win over the environment's:
            // ?endpoint=…&region=…&allow_http=true (and the credentials,
            // though the environment is the better place for those).
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                use object_store::aws::AmazonS3ConfigKey as Key;
                let key = match k.as_ref() {
                    "endpoint" => Key::Endpoint,
                    "region" => Key::Region,
                    "allow_http" => {
                        b = b.with_allow_http(v == "true");
                        continue;
                    }
                    "access_key_id" => Key::AccessKeyId,
                    "secret_access_key" => Key::SecretAccessKey,
                    other => {
                        return Err(bad(format!(
                            "'{other}' is not a setting of an s3:// storage URL (endpoint, region, allow_http, access_key_id, secret_access_key)"
                        )))
                    }
                };
                b = b.with_config(key, v.to_string());
            }
            let s3 = b
                .build()
                .map_err(|e| bad(format!("cannot use s3://{rest}: {e}")))?;
            let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                p => Arc::new(object_store::prefix::PrefixStore::new(s3, p)),
            };
            return Ok(Objects::Remote {
                store,
                // Without the query: it may hold credentials.
                describe: format!("s3://{rest}"),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(&url);
        if dir.is_empty() || !std::path::Path::new(dir).is_absolute() && url.contains("://") {
            return Err(bad(format!(
                "'{url}' is not a storage URL: use database, file:///DIR, s3://BUCKET[/PREFIX] or a directory"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {dir}: {e}")))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| bad(format!("cannot use {dir}: {e}")))?;
        Ok(Objects::Remote {
            store: Arc::new(local),
            describe: format!("file://{}", dir),
        })
    }

    /// For log lines and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Objects::Database(_) => "database".into(),
            Objects::Remote { describe, .. } => describe.clone(),
        }
    }

    /// Store the object `key` (`uploads/upl_…`) from `body`, refusing more
    /// than `max` bytes (`too_big` is the error then). Nothing is left
    /// behind when it fails.
    pub async fn put<B: AsRef<[u8]>>(
        &self,
        key: &str,
        mut body: impl Stream<Item = Result<B, Error>> + Unpin,
        max: u64,
        too_big: impl Fn() -> Error,
    ) -> Result<Stored, Error> {
        let mut sink = self.sink(key).await?;
        let mut hasher = sha2::Sha256::new();
        let mut size: u64 = 0;
        let res: Result<(), Error> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                let chunk = chunk.as_ref();
                size += chunk.len() as u64;
                if size > max {
                    return Err(too_big());
                }
                hasher.update(chunk);
                sink.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => sink.finish().await?,
            Err(e) => {
                sink.abort().await;
                return Err(e);
            }
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        Ok(Stored { size, sha256 })
    }

    async fn sink(&self, key: &str) -> Result<Sink, Error> {
        Ok(match self {
            Objects::Database(store) => Sink::Database(DbSink {
                store: store.clone(),
                key: key.to_string(),
                buf: Vec::with_capacity(CHUNK),
                seq: 0,
            }),
            Objects::Remote { store, .. } => {
                let up = store
                    .put_multipart(&ObjectPath::from(key))
                    .await
                    .map_err(|e| storage_err("start writing", key, e))?;
                Sink::Remote {
                    w: WriteMultipart::new_with_chunk_size(up, CHUNK * 5),
                    key: key.to_string(),
                }
            }
        })
    }

    /// The object `key` and its size; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<(ByteStream, u64)>, Error> {
        match self {
            Objects::Database(store) => {
                let mut c = store.conn().await?;
                let Some(size) = shellwego_store::objects::size(&mut c, key).await? else {
                    return Ok(None);
                };
                drop(c);
                let (store, key) = (store.clone(), key.to_string());
                // One chunk per read, on a connection taken for that read
                // (a slow download holds none in between).
                let chunks = futures::stream::try_unfold(0i64, move |seq| {
                    let (store, key) = (store.clone(), key.clone());
                    async move {
                        let mut c = store.conn().await?;
                        let chunk = shellwego_store::objects::chunk(&mut c, &key, seq).await?;
                        Ok::<_, Error>(chunk.map(|d| (Bytes::from(d), seq + 1)))
                    }
                });
                Ok(Some((Box::pin(chunks), size)))
            }
            Objects::Remote { store, .. } => match store.get(&ObjectPath::from(key)).await {
                Ok(got) => {
                    let size = got.meta.size;
                    let key = key.to_string();
                    let stream = got
                        .into_stream()
                        .map(move |r| r.map_err(|e| storage_err("read", &key, e)));
                    Ok(Some((Box::pin(stream), size)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(storage_err("read", key, e)),
            },
        }
    }

    /// Delete the object `key` (nothing when there is none).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            Objects::Database(store) => {
                let mut c = store.conn().await?;
                shellwego_store::objects::delete(&mut c, key).await
            }
            Objects::Remote { store, .. } => match store.delete(&ObjectPath::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_err("delete", key, e)),
            },
        }
    }
}

fn storage_err(what: &str, key: &str, e: object_store::Error) -> Error {
    Error::internal_source(format!("object storage: cannot {what} {key}"), e)
}

/// An object being written.
enum Sink {
    Database(DbSink),
    Remote { w: WriteMultipart, key: String },
}

/// An object being written to the database, a chunk at a time.
struct DbSink {
    store: Store,
    key: String,
    buf: Vec<u8>,
    seq: i64,
}

impl DbSink {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        let mut c = self.store.conn().await?;
        shellwego_store::objects::put_chunk(&mut c, &self.key, self.seq, &self.buf).await?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }
}

impl Sink {
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        match self {
            Sink::Database(d) => d.write(data).await,
            Sink::Remote { w, key } => {
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| storage_err("write", key, e))?;
                w.write(data);
                Ok(())
            }
        }
    }

    async fn finish(self) -> Result<(), Error> {
        match self {
            // The last chunk (an empty object is one empty chunk, so that
            // it exists).
            Sink::Database(mut d) if !d.buf.is_empty() || d.seq == 0 => d.flush().await,
            Sink::Database(_) => Ok(()),
            Sink::Remote { w, key } => w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| storage_err("finish writing", &key, e)),
        }
    }

    async fn abort(self) {
        match self {
            Sink::Database(d) => {
                if let Ok(mut c) = d.store.conn().await {
                    let _ = shellwego_store::objects::delete(&mut c, &d.key).await;
                }
            }
            Sink::Remote { w, .. } => {
                let _ = w.abort().await;
            }
        }
    }
}
