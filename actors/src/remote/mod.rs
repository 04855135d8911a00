//! Object storage: `s3://`, `gs://` and `az://` locations, read by ranges
//! and written whole, through the `object_store` crate.
//!
//! ```text
//!  URL ─▶ a client per bucket (credentials and endpoint from the cloud's
//!         standard environment: AWS_*, GOOGLE_*, AZURE_*), retrying
//!         throttling (429, 503 SlowDown) and transient errors with backoff
//!  read   ranged GETs of BLOCK bytes, the next block fetched while the
//!         current one is read (at most 2 × BLOCK held: reader.rs)
//!  write  one PUT (create-only) for a small file, a multipart upload for a
//!         large one: visible whole when complete, or not at all
//! ```
//!
//! Calls run on one small tokio runtime of stook's own ("stook-io" threads);
//! an actor waits for its call's answer on a channel, so no actor's own
//! runtime is ever blocked on from inside itself.
//!
//! A location is kept in a `PathBuf` as the URL text the user wrote
//! (`s3://bucket/key`): [`is_url`] tells it from a local path.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

mod reader;

pub use reader::{ObjectChunks, ObjectReader};

/// The URL schemes read as object storage.
pub const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Bytes in one ranged GET, and in one part of a multipart upload.
pub const BLOCK: usize = 8 << 20;

/// Files up to this size are uploaded with one PUT; larger ones in parts.
const ONE_PUT: u64 = BLOCK as u64;

/// Whether `path` is an object-storage URL (`s3://…`, `gs://…`, `az://…`).
pub fn is_url(path: &FsPath) -> bool {
    path.to_str()
        .and_then(|s| s.split_once("://"))
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Whether `path` names a directory: a local one, or a URL ending in `/`.
pub fn is_dir(path: &FsPath) -> bool {
    if is_url(path) {
        path.to_str().is_some_and(|s| s.ends_with('/'))
    } else {
        path.is_dir()
    }
}

/// `path`'s bytes from the start: a local file, or an object read by
/// ranges.
pub fn open_read(path: &FsPath) -> io::Result<Box<dyn std::io::Read + Send>> {
    if !is_url(path) {
        return Ok(Box::new(std::fs::File::open(path)?));
    }
    Location::parse(path)?.open()
}

/// The objects directly under the prefix `path` names whose names `keep`
/// accepts, as URLs, in name order.
pub fn files_under(
    path: &FsPath,
    keep: impl Fn(&str) -> bool,
) -> io::Result<Vec<std::path::PathBuf>> {
    let loc = Location::parse(path)?;
    let mut names = loc.names()?;
    names.retain(|n| keep(n));
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| loc.child(&n).url.clone().into())
        .collect())
}

/// The runtime every object-storage call runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // TLS through rustls with ring (an application that installed a
        // provider of its own keeps it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stook-io")
            .enable_all()
            .build()
            .expect("the object-storage runtime starts")
    })
}

/// Runs `f` on the object-storage runtime and waits for its answer (from
/// any thread, an actor's included).
pub(crate) fn wait<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    start(f).recv().expect("an object-storage call answers")
}

/// Starts `f` on the object-storage runtime; its answer waits on the
/// returned channel.
pub(crate) fn start<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx
}

/// One object (or prefix) in a bucket.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    key: Key,
    url: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// An object-storage error as an I/O error: not found, access denied, or
/// other (with the store's message, which names the object).
fn io_error(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::Other,
    };
    let mut text = e.to_string();
    // No credentials in the environment: the last place looked is the
    // instance metadata service, which says nothing helpful off a cloud VM.
    if text.contains("169.254.169.254") || text.contains("metadata.google.internal") {
        text.push_str(
            " (no credentials were found in the environment: set the store's variables, \
             such as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance \
             or workload role is available)",
        );
    }
    io::Error::new(kind, text)
}

/// Retries: object_store's backoff (100 ms doubling to 15 s), up to 10
/// times and 3 minutes per request, for 429, 5xx and broken connections.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
        ..RetryConfig::default()
    }
}

/// The client for `url`'s bucket, made once per bucket and kept.
fn store_for(url: &url::Url, scheme: ObjectStoreScheme) -> io::Result<Arc<dyn ObjectStore>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    // Its start installs the TLS provider the client is built with.
    runtime();
    let root = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    let mut stores = STORES.get_or_init(Default::default).lock().expect("stores");
    if let Some(s) = stores.get(&root) {
        return Ok(s.clone());
    }
    let bad = |e: object_store::Error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot use {root}: {e}"),
        )
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(root.clone())
                .with_retry(retry());
            // An S3-compatible store named by a plain-HTTP endpoint (a
            // store on the cluster's own network) is reached as named.
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default();
            if endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(bad)?)
        }
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(root.clone())
                .with_retry(retry())
                .build()
                .map_err(bad)?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(root.clone())
                .with_retry(retry())
                .build()
                .map_err(bad)?,
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{root}: not an object-storage URL (s3://, gs://, az://)"),
            ))
        }
    };
    stores.insert(root, store.clone());
    Ok(store)
}

impl Location {
    /// The location `path` names (a URL, see [`is_url`]).
    pub fn parse(path: &FsPath) -> io::Result<Self> {
        let text = path.to_str().unwrap_or_default();
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        let url = url::Url::parse(text).map_err(|e| invalid(format!("{text}: not a URL: {e}")))?;
        let (scheme, key) = ObjectStoreScheme::parse(&url)
            .map_err(|e| invalid(format!("{text}: not an object-storage URL: {e}")))?;
        Ok(Location {
            store: store_for(&url, scheme)?,
            key,
            url: text.trim_end_matches('/').to_string(),
        })
    }

    /// The URL, as the user wrote it (no trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key within the bucket.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The object `name` under this prefix.
    pub fn child(&self, name: &str) -> Location {
        Location {
            store: self.store.clone(),
            key: self.key.clone().join(name),
            url: format!("{}/{name}", self.url),
        }
    }

    /// The object's size, modification time and ETag.
    pub fn head(&self) -> io::Result<ObjectMeta> {
        let (store, key) = (self.store.clone(), self.key.clone());
        wait(async move { store.head(&key).await }).map_err(io_error)
    }

    /// Bytes `range` of the object.
    pub fn get_range(&self, range: std::ops::Range<u64>) -> io::Result<Bytes> {
        let (store, key) = (self.store.clone(), self.key.clone());
        wait(async move { store.get_range(&key, range).await }).map_err(io_error)
    }

    /// The object whole (for small objects: manifests, reports).
    pub fn get(&self) -> io::Result<Bytes> {
        let (store, key) = (self.store.clone(), self.key.clone());
        wait(async move { store.get(&key).await?.bytes().await }).map_err(io_error)
    }

    /// Every object under this prefix (at any depth), in key order.
    pub fn list(&self) -> io::Result<Vec<ObjectMeta>> {
        let (store, key) = (self.store.clone(), self.key.clone());
        let mut all = wait(async move {
            let prefix = (!key.as_ref().is_empty()).then_some(key);
            let mut s = store.list(prefix.as_ref());
            let mut all = Vec::new();
            while let Some(m) = s.next().await {
                all.push(m?);
            }
            Ok::<_, object_store::Error>(all)
        })
        .map_err(io_error)?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    /// The names of the objects directly under this prefix.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let prefix = self.key.as_ref().len();
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|m| {
                let rest = m.location.as_ref().get(prefix..)?.trim_start_matches('/');
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect())
    }

    /// Writes `data` as the object: only if no object has the name when
    /// `create` (an `AlreadyExists` error otherwise), else replacing it.
    pub fn put(&self, data: Bytes, create: bool) -> io::Result<()> {
        let (store, key) = (self.store.clone(), self.key.clone());
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        wait(async move { store.put_opts(&key, PutPayload::from(data), opts).await })
            .map(|_| ())
            .map_err(io_error)
    }

    /// Uploads the local file `file` as the object: one PUT when at most
    /// BLOCK bytes (create-only when `create`), else a multipart upload of
    /// BLOCK-sized parts, visible once complete; an upload that fails is
    /// aborted. At most 3 × BLOCK are held: the part being filled and two
    /// in flight.
    /// A multipart upload replaces an object of the name, if any (the
    /// caller checked there is none where that matters).
    pub fn upload(&self, file: &FsPath, create: bool) -> io::Result<()> {
        use std::io::Read;
        let size = std::fs::metadata(file)?.len();
        if size <= ONE_PUT {
            return self.put(Bytes::from(std::fs::read(file)?), create);
        }
        if create && self.head().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: already exists", self.url),
            ));
        }
        let mut f = std::fs::File::open(file)?;
        let (store, key) = (self.store.clone(), self.key.clone());
        // The whole upload runs on the runtime (its parts are its tasks).
        wait(async move {
            let upload = store.put_multipart(&key).await.map_err(io_error)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, BLOCK);
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(e);
                    }
                };
                w.write(&buf[..n]);
                if let Err(e) = w.wait_for_capacity(2).await {
                    let _ = w.abort().await;
                    return Err(io_error(e));
                }
            }
            w.finish().await.map(|_| ()).map_err(io_error)
        })
    }

    /// Deletes the object (one that is already gone is no error).
    pub fn delete(&self) -> io::Result<()> {
        let (store, key) = (self.store.clone(), self.key.clone());
        match wait(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    /// A reader of the object from its start (its size asked first).
    pub fn open(&self) -> io::Result<Box<dyn std::io::Read + Send>> {
        let size = self.head()?.size;
        Ok(Box::new(self.reader(size)))
    }

    /// A reader of the object from its start (its size known).
    pub fn reader(&self, size: u64) -> ObjectReader {
        ObjectReader::new(self.clone(), size)
    }
}
